"""Annotation statistics from the masks and events tables (what ``segany project stats`` and
the server's ``/api/stats`` show).

Per (stage, annotator):

* ``masks``: masks stored now; ``images``: images with at least one of them;
  ``images_done``: those of them whose status is ``done``;
* ``accepted``: ``accept`` events; ``seconds_per_mask``: the mean ``elapsed_ms`` of the
  accept events that carry one, in seconds (None without any);
* ``masks_per_image``: ``masks / images``;
* ``clicks_per_mask``: ``prompt`` events per ``accept`` event.

``prefill``: the stage-2 proposals and the images with and without them
(:func:`.proposals.compute_prefill_stats`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import IMAGE_STATUSES, AnnotatorRow, EventRow, ImageRow, MaskRow
from .proposals import compute_prefill_stats

__all__ = ["compute_stats"]


def compute_stats(s: Session) -> dict[str, Any]:
    """``{"images": {"total", "new", "in_progress", "done", "skipped"}, "masks": N,
    "groups": [{"stage", "annotator", "masks", "images", "images_done", "accepted",
    "seconds_per_mask", "masks_per_image", "clicks_per_mask"}, ...], "prefill": {...}}``,
    groups sorted by stage then annotator name (None, masks without an annotator, first);
    ``prefill`` as :func:`.proposals.compute_prefill_stats`."""
    names = dict(s.execute(select(AnnotatorRow.id, AnnotatorRow.name)).all())
    groups: dict[tuple[int, int | None], dict[str, Any]] = {}

    def group(stage: int, aid: int | None) -> dict[str, Any]:
        key = (int(stage), aid)
        if key not in groups:
            groups[key] = {
                "stage": int(stage),
                "annotator": None if aid is None else names[aid],
                "masks": 0,
                "images": 0,
                "images_done": 0,
                "accepted": 0,
                "prompts": 0,
                "_elapsed_ms": 0,
                "_timed": 0,
            }
        return groups[key]

    for stage, aid, n, images in s.execute(
        select(
            MaskRow.stage,
            MaskRow.annotator_id,
            func.count(),
            func.count(func.distinct(MaskRow.image_id)),
        ).group_by(MaskRow.stage, MaskRow.annotator_id)
    ):
        g = group(stage, aid)
        g["masks"], g["images"] = int(n), int(images)
    for stage, aid, n in s.execute(
        select(MaskRow.stage, MaskRow.annotator_id, func.count(func.distinct(MaskRow.image_id)))
        .join(ImageRow, ImageRow.id == MaskRow.image_id)
        .where(ImageRow.status == "done")
        .group_by(MaskRow.stage, MaskRow.annotator_id)
    ):
        group(stage, aid)["images_done"] = int(n)
    for kind, stage, aid, n, total, timed in s.execute(
        select(
            EventRow.kind,
            EventRow.stage,
            EventRow.annotator_id,
            func.count(),
            func.sum(EventRow.elapsed_ms),
            func.count(EventRow.elapsed_ms),
        )
        .where(EventRow.kind.in_(("accept", "prompt")))
        .group_by(EventRow.kind, EventRow.stage, EventRow.annotator_id)
    ):
        g = group(stage, aid)
        if kind == "accept":
            g["accepted"] = int(n)
            g["_elapsed_ms"], g["_timed"] = int(total or 0), int(timed)
        else:
            g["prompts"] = int(n)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1] is not None, groups[k]["annotator"] or "")):
        g = groups[key]
        elapsed, timed = g.pop("_elapsed_ms"), g.pop("_timed")
        g["seconds_per_mask"] = elapsed / 1000 / timed if timed else None
        g["masks_per_image"] = g["masks"] / g["images"] if g["images"] else None
        g["clicks_per_mask"] = g["prompts"] / g["accepted"] if g["accepted"] else None
        out.append(g)
    by_status = dict(
        s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all()
    )
    images = {"total": sum(by_status.values())}
    images.update({k: int(by_status.get(k, 0)) for k in IMAGE_STATUSES})
    return {
        "images": images,
        "masks": int(s.scalar(select(func.count()).select_from(MaskRow)) or 0),
        "groups": out,
        "prefill": compute_prefill_stats(s),
    }
