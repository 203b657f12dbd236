"""The metrics routes of the annotation server (what the tool's metrics page plots).

``GET /api/stats/timeline?bucket=auto|hour|day|week&stage=1|2|3&annotator=NAME`` (all
optional; the server's authentication applies) answers
:func:`segany.engine.store.timeline.compute_timeline`'s JSON::

    {"bucket": "hour", "bucket_seconds": 3600,
     "start": "2030-01-01T12:00:00+00:00", "end": "2030-01-01T14:00:00+00:00",
     "stage": null, "annotator": null,
     "buckets": ["2030-01-01T12:00:00+00:00", "2030-01-01T13:00:00+00:00"],
     "series": [{"stage": 1, "annotator": "alice", "masks": 3, "images": 2, "prompts": 7,
                 "seconds_per_mask": 12.5, "clicks_per_mask": 2.33, "masks_per_image": 1.5,
                 "model_versions": [{"id": 1, "name": "segany_tiny", "masks": 3}],
                 "points": [{"t": "2030-01-01T12:00:00+00:00", "masks": 2, "images": 1,
                             "prompts": 5, "seconds_per_mask": 20.0,
                             "clicks_per_mask": 2.5, "masks_per_image": 2.0}, ...]}],
     "model_versions": [{"id": 1, "name": "segany_tiny", "fingerprint": "sha256:...",
                         "created_at": "...", "masks": 3, "seconds_per_mask": 12.5}]}

Times are ISO 8601 UTC; a bucket is ``[t, t + bucket_seconds)``. Numbers that have no data
(no accept event with a time, no accepted mask) are ``null``. A bad parameter is a 422 whose
message says what is allowed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..store import InvalidInput, Project
from ..store.timeline import BUCKETS

__all__ = ["add_metrics_routes"]


def add_metrics_routes(app: FastAPI, project: Project) -> None:
    """Add the metrics routes for ``project`` to ``app``."""

    @app.get("/api/stats/timeline")
    async def timeline(
        bucket: str = "auto", stage: str | None = None, annotator: str | None = None
    ) -> Any:
        """Seconds per mask, clicks per mask, masks per image and masks accepted per stage,
        annotator and time bucket, and per model version (see this module's docstring)."""
        allowed = ", ".join(("auto", *BUCKETS))
        if bucket not in ("auto", *BUCKETS):
            return _error(f"bucket must be one of {allowed}; got {bucket!r}")
        stage_n: int | None = None
        if stage not in (None, ""):
            if stage not in ("1", "2", "3"):
                return _error(f"stage must be 1, 2 or 3 (or omitted); got {stage!r}")
            stage_n = int(stage)
        try:
            return await run_in_threadpool(
                project.timeline, bucket=bucket, stage=stage_n, annotator=annotator or None
            )
        except InvalidInput as e:
            return _error(str(e))


def _error(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=422)
