"""Annotation metrics over time (the data engine's "seconds per mask as the model improves"
view), from the events and masks tables. SQLAlchemy core queries that read the same on SQLite
and PostgreSQL; the time buckets are computed in Python (UTC), so no database date function
is needed.

Per (stage, annotator) and time bucket, from the events of that bucket:

* ``masks``: ``accept`` events (masks accepted);
* ``seconds_per_mask``: the mean ``elapsed_ms`` of those accept events that carry one, in
  seconds (None without any);
* ``clicks_per_mask``: ``prompt`` events / accept events (None without accepts);
* ``images``: distinct images with a prompt or an accept event; ``masks_per_image``:
  ``masks / images`` (None without images).

Per model version (the masks stored now, by ``masks.model_version_id``): ``masks`` made with
it and their ``seconds_per_mask`` (the mean ``elapsed_ms`` of those masks' accept events).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import InvalidInput
from .models import STAGES, AnnotatorRow, EventRow, MaskRow, ModelVersionRow

__all__ = ["BUCKETS", "MAX_AUTO_BUCKETS", "bucket_start", "compute_timeline"]

#: Bucket names and their lengths in seconds (``auto`` picks one of them).
BUCKETS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
#: ``auto`` picks the finest bucket that gives at most this many buckets.
MAX_AUTO_BUCKETS = 60
_EPOCH_MONDAY = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)


def bucket_start(at: dt.datetime, bucket: str) -> dt.datetime:
    """The UTC start of the ``bucket`` (``hour``, ``day`` or ``week``, weeks from Monday) that
    holds the aware datetime ``at``."""
    at = at.astimezone(dt.UTC)
    if bucket == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "day":
        return day
    return day - dt.timedelta(days=(day - _EPOCH_MONDAY).days % 7)


def _pick_bucket(first: dt.datetime | None, last: dt.datetime | None) -> str:
    if first is None or last is None:
        return "hour"
    for name, length in BUCKETS.items():
        n = (bucket_start(last, name) - bucket_start(first, name)).total_seconds() // length + 1
        if n <= MAX_AUTO_BUCKETS:
            return name
    return "week"


def _check(s: Session, bucket: Any, stage: Any, annotator: Any) -> tuple[str, int | None, Any]:
    """Validated ``(bucket, stage, annotator filter)``; the annotator filter is an id, or
    ``...`` for no filter."""
    allowed = ("auto", *BUCKETS)
    if bucket not in allowed:
        raise InvalidInput(f"bucket must be one of {', '.join(allowed)}; got {bucket!r}")
    if stage is not None and (isinstance(stage, bool) or stage not in STAGES):
        raise InvalidInput(
            f"stage must be one of {', '.join(map(str, STAGES))} (or omitted); got {stage!r}"
        )
    if annotator is None:
        return bucket, stage, ...
    if not isinstance(annotator, str) or not annotator:
        raise InvalidInput(f"annotator must be an annotator's name; got {annotator!r}")
    aid = s.scalar(select(AnnotatorRow.id).where(AnnotatorRow.name == annotator))
    if aid is None:
        names = list(s.scalars(select(AnnotatorRow.name).order_by(AnnotatorRow.name).limit(50)))
        known = ", ".join(repr(n) for n in names) or "none yet"
        raise InvalidInput(f"no annotator named {annotator!r}; the project's annotators: {known}")
    return bucket, stage, aid


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def compute_timeline(
    s: Session,
    *,
    bucket: str = "auto",
    stage: int | None = None,
    annotator: str | None = None,
) -> dict[str, Any]:
    """The metrics over time (see the module docstring for each number).

    Args:
        bucket: ``hour``, ``day``, ``week`` or ``auto`` (the finest with at most
            :data:`MAX_AUTO_BUCKETS` buckets between the first and the last event).
        stage: only this data-engine stage (1, 2, 3); None for all.
        annotator: only this annotator (a name); None for all.

    Returns:
        ``{"bucket", "bucket_seconds", "start", "end", "stage", "annotator", "buckets",
        "series", "model_versions"}``: ``buckets`` the ISO 8601 UTC start of every bucket from
        the first event's to the last one's (``start``/``end``: the first bucket's start and
        the last one's end; None without events); ``series`` one entry per (stage,
        annotator) sorted by stage then name (None, no annotator, first): ``{"stage",
        "annotator", "masks", "images", "seconds_per_mask", "clicks_per_mask",
        "masks_per_image", "model_versions": [{"id", "name", "masks"}], "points": [{"t",
        "masks", "images", "prompts", "seconds_per_mask", "clicks_per_mask",
        "masks_per_image"}]}`` (totals over all buckets, then one point per bucket with
        events, in time order); ``model_versions`` every registered version in order
        ``{"id", "name", "fingerprint", "created_at", "parent_id", "masks",
        "seconds_per_mask", "holdout_miou_1pt", "holdout_miou_5pt", "dataset_version"}``
        (masks of the filtered groups; the held-out mIoU and dataset version of a retrained
        version's evaluation, else None), plus ``{"id": None, "name": None, ...}`` first when masks
        without a model version exist.

    Raises:
        InvalidInput: an unknown bucket, stage or annotator (the message says what is
        allowed: the buckets, the stages, the project's annotators).
    """
    bucket, stage, aid = _check(s, bucket, stage, annotator)
    names = dict(s.execute(select(AnnotatorRow.id, AnnotatorRow.name)).all())

    def filtered(query: Any, table: Any) -> Any:
        if stage is not None:
            query = query.where(table.stage == stage)
        if aid is not ...:
            query = query.where(table.annotator_id == aid)
        return query

    events = s.execute(
        filtered(
            select(
                EventRow.at,
                EventRow.kind,
                EventRow.stage,
                EventRow.annotator_id,
                EventRow.image_id,
                EventRow.elapsed_ms,
                EventRow.mask_id,
            ).where(EventRow.kind.in_(("accept", "prompt"))),
            EventRow,
        ).order_by(EventRow.at, EventRow.id)
    ).all()
    first = events[0].at if events else None
    last = events[-1].at if events else None
    if bucket == "auto":
        bucket = _pick_bucket(first, last)
    length = BUCKETS[bucket]

    # per (stage, annotator id) -> per bucket start -> counters
    cells: dict[tuple[int, int | None], dict[dt.datetime, dict[str, Any]]] = defaultdict(dict)
    elapsed_of_mask: dict[int, int] = {}
    for at, kind, ev_stage, ev_aid, image_id, elapsed, mask_id in events:
        t = bucket_start(at, bucket)
        cell = cells[(int(ev_stage), ev_aid)].setdefault(
            t, {"masks": 0, "prompts": 0, "ms": 0, "timed": 0, "images": set()}
        )
        if image_id is not None:
            cell["images"].add(image_id)
        if kind == "prompt":
            cell["prompts"] += 1
            continue
        cell["masks"] += 1
        if elapsed is not None:
            cell["ms"] += elapsed
            cell["timed"] += 1
            if mask_id is not None:
                elapsed_of_mask[mask_id] = elapsed

    versions_of: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    mv_masks: dict[int | None, list[int]] = defaultdict(list)
    version_names = dict(s.execute(select(ModelVersionRow.id, ModelVersionRow.name)).all())
    mask_rows = s.execute(
        filtered(
            select(MaskRow.id, MaskRow.stage, MaskRow.annotator_id, MaskRow.model_version_id),
            MaskRow,
        )
    ).all()
    per_group_version: dict[tuple[int, int | None], dict[int | None, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for mask_id, m_stage, m_aid, mv in mask_rows:
        mv_masks[mv].append(mask_id)
        per_group_version[(int(m_stage), m_aid)][mv] += 1
    for key, counts in per_group_version.items():
        versions_of[key] = [
            {"id": mv, "name": version_names.get(mv), "masks": n}
            for mv, n in sorted(counts.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))
        ]

    def sort_key(key: tuple[int, int | None]) -> tuple:
        return (key[0], key[1] is not None, names.get(key[1]) or "")

    series = []
    for key in sorted(set(cells) | set(versions_of), key=sort_key):
        points = []
        total = {"masks": 0, "prompts": 0, "ms": 0, "timed": 0, "images": set()}
        for t in sorted(cells.get(key, {})):
            c = cells[key][t]
            for k in ("masks", "prompts", "ms", "timed"):
                total[k] += c[k]
            total["images"] |= c["images"]
            points.append({"t": t.isoformat(), **_numbers(c)})
        series.append(
            {
                "stage": key[0],
                "annotator": None if key[1] is None else names.get(key[1]),
                **_numbers(total),
                "model_versions": versions_of.get(key, []),
                "points": points,
            }
        )

    versions = []
    if mv_masks.get(None):
        versions.append(_version_entry(None, mv_masks[None], elapsed_of_mask))
    for row in s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.id)):
        versions.append(_version_entry(row, mv_masks.get(row.id, []), elapsed_of_mask))

    buckets: list[str] = []
    start = end = None
    if first is not None and last is not None:
        t0, t1 = bucket_start(first, bucket), bucket_start(last, bucket)
        n = int((t1 - t0).total_seconds() // length) + 1
        buckets = [(t0 + dt.timedelta(seconds=i * length)).isoformat() for i in range(n)]
        start, end = t0.isoformat(), (t1 + dt.timedelta(seconds=length)).isoformat()
    return {
        "bucket": bucket,
        "bucket_seconds": length,
        "start": start,
        "end": end,
        "stage": stage,
        "annotator": annotator,
        "buckets": buckets,
        "series": series,
        "model_versions": versions,
    }


def _numbers(c: dict[str, Any]) -> dict[str, Any]:
    images = len(c["images"])
    return {
        "masks": c["masks"],
        "images": images,
        "prompts": c["prompts"],
        "seconds_per_mask": None if not c["timed"] else c["ms"] / 1000 / c["timed"],
        "clicks_per_mask": _ratio(c["prompts"], c["masks"]),
        "masks_per_image": _ratio(c["masks"], images),
    }


def _version_entry(
    row: ModelVersionRow | None, mask_ids: list[int], elapsed_of_mask: dict[int, int]
) -> dict[str, Any]:
    timed = [elapsed_of_mask[m] for m in mask_ids if m in elapsed_of_mask]
    evaluation = (row.evaluation if row is not None else None) or {}
    return {
        "id": None if row is None else row.id,
        "name": None if row is None else row.name,
        "fingerprint": None if row is None else row.fingerprint,
        "created_at": None if row is None else row.created_at.isoformat(),
        "parent_id": None if row is None else row.parent_id,
        "masks": len(mask_ids),
        "seconds_per_mask": sum(timed) / 1000 / len(timed) if timed else None,
        "holdout_miou_1pt": evaluation.get("miou_1pt"),
        "holdout_miou_5pt": evaluation.get("miou_5pt"),
        "dataset_version": evaluation.get("dataset_version"),
    }
