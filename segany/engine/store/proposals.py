"""Prefilled masks (data-engine stage 2): proposals stored with ``source="prefill"``, then
accepted, edited or rejected by an annotator. Methods of :class:`segany.engine.store.Project`.

A proposal is a mask row like any other (``source="prefill"``, ``stage=2``, no annotator),
so the tool and the exports read it as they read every mask. Which masks were proposed, and
what became of them, is kept in the event log, with no schema change:

* ``prefill`` (one per image, in the transaction that stores its proposals): payload
  ``{"method", "mask_ids", "model", "params"}``. An image with this event is prefilled, even
  when nothing was confident enough (a re-run does not redo it);
* ``accept_prefill``: an annotator accepted the proposal as it is (the mask stays
  ``source="prefill"``, gets the annotator and a new version);
* ``edit`` (``PATCH``, as for any mask): an edited proposal counts as reviewed and edited;
* ``reject_prefill``: the proposal was deleted (the payload keeps it, as ``delete`` does).

A proposal's state (:meth:`ProposalMethods.proposal_states`) is ``proposal`` (waiting for
review), ``accepted`` or ``edited``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import checks
from .base import AnnotatorRef, ProjectBase
from .errors import InvalidInput, NotFound, VersionConflict
from .models import AnnotatorRow, EventRow, ImageRow, MaskRow
from .records import MaskRecord, ModelVersion

__all__ = [
    "ACCEPT_PREFILL",
    "PREFILL",
    "PREFILL_EVENT_KINDS",
    "REJECT_PREFILL",
    "ProposalMethods",
    "compute_prefill_stats",
    "pending_by_image",
    "proposal_ids",
    "proposal_states",
]

#: The event kinds of stage 2 (recorded by the store only, never posted by clients).
PREFILL = "prefill"
ACCEPT_PREFILL = "accept_prefill"
REJECT_PREFILL = "reject_prefill"
PREFILL_EVENT_KINDS = (PREFILL, ACCEPT_PREFILL, REJECT_PREFILL)


def proposal_ids(s: Session, image_id: int | None = None) -> dict[int, tuple[int, int]]:
    """``{mask_id: (image_id, prefill event id)}`` of every mask ever proposed (of one image if
    given). A mask id that a database reused after a delete belongs to its newest event."""
    query = select(EventRow.id, EventRow.image_id, EventRow.payload).where(EventRow.kind == PREFILL)
    if image_id is not None:
        query = query.where(EventRow.image_id == image_id)
    out: dict[int, tuple[int, int]] = {}
    for eid, img, payload in s.execute(query.order_by(EventRow.id)):
        for mid in (payload or {}).get("mask_ids", []):
            out[int(mid)] = (int(img), int(eid))
    return out


def _later(s: Session, ids: dict[int, tuple[int, int]], kinds: tuple[str, ...]) -> list:
    """``(mask_id, kind)`` of the events of ``kinds`` on proposals, after their proposal."""
    if not ids:
        return []
    rows = s.execute(
        select(EventRow.id, EventRow.mask_id, EventRow.kind).where(
            EventRow.kind.in_(kinds), EventRow.mask_id.in_(list(ids))
        )
    )
    return [(mid, kind) for eid, mid, kind in rows if eid > ids[mid][1]]


def proposal_states(s: Session, image_id: int | None = None) -> dict[int, str]:
    """``{mask_id: "proposal" | "accepted" | "edited"}`` for the proposals still stored (of one
    image if given): ``edited`` once PATCHed, else ``accepted`` after ``accept_prefill``."""
    ids = proposal_ids(s, image_id)
    if not ids:
        return {}
    rows = s.execute(
        select(MaskRow.id, MaskRow.image_id).where(
            MaskRow.id.in_(list(ids)), MaskRow.source == "prefill"
        )
    )
    states = {mid: "proposal" for mid, img in rows if ids[mid][0] == img}
    for mid, kind in _later(s, {m: ids[m] for m in states}, (ACCEPT_PREFILL, "edit")):
        if kind == "edit":
            states[mid] = "edited"
        elif states[mid] == "proposal":
            states[mid] = "accepted"
    return dict(sorted(states.items()))


def pending_by_image(s: Session) -> dict[int, int]:
    """``{image_id: n}``: how many proposals wait for review on each image (images with none
    are left out)."""
    ids = proposal_ids(s)
    out: dict[int, int] = {}
    for mid, state in proposal_states(s).items():
        if state == "proposal":
            out[ids[mid][0]] = out.get(ids[mid][0], 0) + 1
    return out


class ProposalMethods(ProjectBase):
    """Store prefilled proposals, and accept or reject them."""

    def add_prefill(
        self,
        image_id: int,
        masks: Sequence[dict[str, Any]],
        *,
        method: str,
        model_version: ModelVersion | int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[MaskRecord] | None:
        """Store an image's proposals and its ``prefill`` event in one transaction, unless
        the image is prefilled already (then nothing is written and None is returned).

        Each mask is a dict with ``segmentation`` (COCO RLE of the image's size, or an
        ``(H, W)`` bool mask) and optionally ``predicted_iou``, ``stability_score``,
        ``point_coords`` (``[[x, y]]`` pixels), ``crop_box`` (XYWH) and ``prompts`` (JSON: the
        box or points SAM was given). Stored as ``source="prefill"``, ``stage=2``, without an
        annotator, and with ``model_version``. ``params`` (JSON) records the thresholds used.
        Raises InvalidInput for a bad mask (nothing is stored), NotFound."""
        method = checks.check_name(method, "prefill method")
        params = checks.check_json(params, "params")
        fields = [
            {
                "predicted_iou": checks.check_score(m.get("predicted_iou"), "predicted_iou"),
                "stability_score": checks.check_score(m.get("stability_score"), "stability_score"),
                "point_coords": checks.check_points(m.get("point_coords")),
                "crop_box": checks.check_box(m.get("crop_box")),
                "prompts": checks.check_json(m.get("prompts"), "prompts"),
            }
            for m in masks
        ]
        with self._tx() as s:
            image = self._image_row(s, image_id)
            if self._is_prefilled(s, image.id):
                return None
            mid = self._model_id(s, model_version)
            now = self._clock()
            rows = []
            for m, f in zip(masks, fields, strict=True):
                rle, area, bbox = checks.canonical_rle(m["segmentation"], image.height, image.width)
                row = MaskRow(
                    image_id=image.id, counts=rle["counts"], height=image.height,
                    width=image.width, bbox=bbox, area=area, model_version_id=mid,
                    annotator_id=None, created_at=now, updated_at=now, version=1,
                    source="prefill", stage=2, label=None, **f,
                )  # fmt: skip
                s.add(row)
                rows.append(row)
            s.flush()
            self._event(
                s, PREFILL, image_id=image.id, stage=2,
                payload={"method": method, "mask_ids": [r.id for r in rows], "model": mid,
                         "params": params},
            )  # fmt: skip
            return [self._mask_record(s, r) for r in rows]

    def prefilled_image_ids(self) -> set[int]:
        """The images that have been prefilled (a ``prefill`` event), with or without
        proposals."""
        with self._tx() as s:
            return set(s.scalars(select(EventRow.image_id).where(EventRow.kind == PREFILL)))

    def proposal_states(self, image_id: int | None = None) -> dict[int, str]:
        """``{mask_id: "proposal" | "accepted" | "edited"}`` of the stored proposals (of one
        image if given; NotFound for an unknown image)."""
        with self._tx() as s:
            if image_id is not None:
                self._image_row(s, image_id)
            return proposal_states(s, image_id)

    def pending_proposals(self) -> dict[int, int]:
        """``{image_id: n}`` of the images with proposals waiting for review."""
        with self._tx() as s:
            return pending_by_image(s)

    def accept_proposal(
        self,
        mask_id: int,
        *,
        version: int,
        annotator: AnnotatorRef = None,
        elapsed_ms: int | None = None,
    ) -> MaskRecord:
        """Accept a proposal as it is: it keeps ``source="prefill"``, gets ``annotator`` and
        version + 1, and an ``accept_prefill`` event (with ``elapsed_ms``, the time spent
        reviewing it). Raises InvalidInput for a mask that is not a proposal waiting for
        review, VersionConflict when it is not at ``version``, NotFound, LeaseConflict."""
        version = _check_version(version)
        elapsed_ms = checks.check_elapsed(elapsed_ms)
        with self._tx() as s:
            row, aid = self._reviewable(s, mask_id, version, annotator)
            values: dict[str, Any] = {"version": MaskRow.version + 1, "updated_at": self._clock()}
            if aid is not None:
                values["annotator_id"] = aid
            done = s.execute(
                update(MaskRow)
                .where(MaskRow.id == mask_id, MaskRow.version == version)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 0:  # changed meanwhile by a concurrent writer
                raise VersionConflict(f"mask {mask_id} changed meanwhile; reload it")
            s.expire(row)
            row = s.get(MaskRow, mask_id)
            self._event(
                s, ACCEPT_PREFILL, image_id=row.image_id, mask_id=row.id, annotator_id=aid,
                stage=2, elapsed_ms=elapsed_ms, payload={"version": row.version},
            )  # fmt: skip
            return self._mask_record(s, row)

    def reject_proposal(
        self,
        mask_id: int,
        *,
        version: int,
        annotator: AnnotatorRef = None,
        elapsed_ms: int | None = None,
    ) -> None:
        """Reject a proposal: it is deleted, and a ``reject_prefill`` event keeps it. Raises
        as :meth:`accept_proposal` does (an accepted or edited proposal is a mask like any
        other now: delete it with ``delete_mask``)."""
        version = _check_version(version)
        elapsed_ms = checks.check_elapsed(elapsed_ms)
        with self._tx() as s:
            row, aid = self._reviewable(s, mask_id, version, annotator)
            kept = self._mask_record(s, row).to_sa1b()
            done = s.execute(
                delete(MaskRow)
                .where(MaskRow.id == mask_id, MaskRow.version == version)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 0:
                raise VersionConflict(f"mask {mask_id} changed meanwhile; reload it")
            s.expunge(row)
            self._event(
                s, REJECT_PREFILL, image_id=kept["image_id"], mask_id=mask_id,
                annotator_id=aid, stage=2, elapsed_ms=elapsed_ms, payload={"mask": kept},
            )  # fmt: skip

    # ------------------------------------------------------------------ helpers

    def _reviewable(
        self, s: Session, mask_id: int, version: int, annotator: AnnotatorRef
    ) -> tuple[MaskRow, int | None]:
        """The proposal to accept or reject and the reviewer's id, after the checks both share:
        a proposal waiting for review at ``version``, on an image not leased to another."""
        row = self._proposal_row(s, mask_id)
        aid = self._annotator_id(s, annotator)
        self._check_lease(s, s.get(ImageRow, row.image_id), aid)
        self._check_pending(s, row, version)
        return row, aid

    def _proposal_row(self, s: Session, mask_id: int) -> MaskRow:
        ok = isinstance(mask_id, int) and not isinstance(mask_id, bool)
        row = s.get(MaskRow, mask_id) if ok else None
        if row is None:
            raise NotFound(f"no mask with id {mask_id!r}")
        if row.source != "prefill":
            raise InvalidInput(
                f"mask {mask_id} is a {row.source} mask, not a prefilled proposal; only "
                "masks with source 'prefill' are accepted or rejected (edit or delete others)"
            )
        return row

    def _check_pending(self, s: Session, row: MaskRow, version: int) -> None:
        """VersionConflict unless ``row`` is at ``version``; InvalidInput unless it is still
        waiting for review."""
        if row.version != version:
            raise VersionConflict(
                f"mask {row.id} is at version {row.version}, not {version}: it was changed by "
                "someone else; reload it and review the current version",
                current=row.version,
            )
        state = proposal_states(s, row.image_id).get(row.id)
        if state != "proposal":
            raise InvalidInput(
                f"mask {row.id} was {state or 'not proposed by prefill'} already; it is a mask "
                "like any other now: edit it (PATCH) or delete it"
            )


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput(f"version must be the integer version being reviewed; got {version!r}")
    return version


def _rates(accepted: int, edited: int, rejected: int, elapsed: list[int]) -> dict[str, Any]:
    """The review counts with their rates (of the reviewed proposals; None without any) and
    the mean review time in seconds (None when no review carried one)."""
    reviewed = accepted + edited + rejected
    return {
        "accepted": accepted,
        "edited": edited,
        "rejected": rejected,
        "reviewed": reviewed,
        "accept_rate": accepted / reviewed if reviewed else None,
        "edit_rate": edited / reviewed if reviewed else None,
        "reject_rate": rejected / reviewed if reviewed else None,
        "seconds_per_review": sum(elapsed) / 1000 / len(elapsed) if elapsed else None,
    }


def _deciders(s: Session, ids: dict[int, tuple[int, int]], outcome: dict[int, str]) -> dict:
    """``{mask_id: (annotator_id, elapsed_ms)}`` of the event that decided each reviewed
    proposal's ``outcome``: its first ``accept_prefill`` (accepted), first ``edit`` (edited),
    or its ``reject_prefill`` or ``delete`` (rejected)."""
    kinds = {"accepted": (ACCEPT_PREFILL,), "edited": ("edit",),
             "rejected": (REJECT_PREFILL, "delete")}  # fmt: skip
    if not outcome:
        return {}
    rows = s.execute(
        select(EventRow.id, EventRow.mask_id, EventRow.kind, EventRow.annotator_id,
               EventRow.elapsed_ms)
        .where(EventRow.kind.in_((ACCEPT_PREFILL, REJECT_PREFILL, "edit", "delete")),
               EventRow.mask_id.in_(list(outcome)))
        .order_by(EventRow.id)
    )  # fmt: skip
    out: dict[int, tuple[int | None, int | None]] = {}
    for eid, mid, kind, aid, elapsed in rows:
        if eid > ids[mid][1] and mid not in out and kind in kinds[outcome[mid]]:
            out[mid] = (aid, elapsed)
    return out


def compute_prefill_stats(s: Session) -> dict[str, Any]:
    """Stage 2 in numbers: ``{"proposals", "pending", "accepted", "edited", "rejected",
    "reviewed", "accept_rate", "edit_rate", "reject_rate", "seconds_per_review",
    "images_prefilled", "with_prefill": G, "without_prefill": G, "by_annotator": [A, ...]}``.

    The counts are of distinct proposals (``rejected`` includes proposals removed by a plain
    delete); the rates are of the ``reviewed`` ones (None before any review);
    ``seconds_per_review`` is the mean ``elapsed_ms`` of the events that decided the reviews
    (the accept, the first edit, the reject), in seconds. Each ``G`` is ``{"images",
    "masks", "prefill_masks", "masks_per_image", "seconds_per_image"}`` over the ``done``
    images that were (were not) prefilled: their masks except pending proposals, those of
    them that are reviewed proposals, and the mean time from an image's first ``open`` event
    (else its first ``prompt``) to its first ``status`` event to ``done`` after it (over the
    images that have both). Each ``A`` is ``{"annotator", <the review counts, rates and
    seconds_per_review of the reviews it decided>, "with_prefill": G, "without_prefill": G}``
    (``G`` over the images it marked done), sorted by name (None, the reviews without an
    annotator, first)."""
    ids = proposal_ids(s)
    states = proposal_states(s)
    gone = set(ids) - set(states)
    rejected = {mid for mid, _ in _later(s, ids, (REJECT_PREFILL, "delete"))} & gone
    outcome = {m: v for m, v in states.items() if v != "proposal"}
    outcome.update({m: "rejected" for m in rejected})
    decided = _deciders(s, ids, outcome)
    names = dict(s.execute(select(AnnotatorRow.id, AnnotatorRow.name)).all())
    prefilled = set(s.scalars(select(EventRow.image_id).where(EventRow.kind == PREFILL)))
    done = set(s.scalars(select(ImageRow.id).where(ImageRow.status == "done")))
    per_image = dict(
        s.execute(
            select(MaskRow.image_id, func.count())
            .where(MaskRow.image_id.in_(list(done)))
            .group_by(MaskRow.image_id)
        ).all()
    )
    pending: dict[int, int] = {}
    kept: dict[int, int] = {}
    for mid, state in states.items():
        img = ids[mid][0]
        bucket = pending if state == "proposal" else kept
        bucket[img] = bucket.get(img, 0) + 1
    started: dict[int, Any] = {}
    finished: dict[int, float] = {}
    done_by: dict[int, int | None] = {}
    events = s.execute(
        select(EventRow.image_id, EventRow.kind, EventRow.at, EventRow.payload,
               EventRow.annotator_id)
        .where(EventRow.image_id.in_(list(done)), EventRow.kind.in_(("open", "prompt", "status")))
        .order_by(EventRow.id)
    )  # fmt: skip
    first_prompt: dict[int, Any] = {}
    for img, kind, at, payload, aid in events:
        if kind == "open":
            started.setdefault(img, at)
        elif kind == "prompt":
            first_prompt.setdefault(img, at)
        elif (payload or {}).get("to") == "done" and img not in done_by:
            done_by[img] = aid
            start = started.get(img, first_prompt.get(img))
            if start is not None and at >= start:
                finished[img] = (at - start).total_seconds()

    def group(images: set[int]) -> dict[str, Any]:
        n = sum(int(per_image.get(i, 0)) - pending.get(i, 0) for i in images)
        timed = [finished[i] for i in images if i in finished]
        return {
            "images": len(images),
            "masks": n,
            "prefill_masks": sum(kept.get(i, 0) for i in images),
            "masks_per_image": n / len(images) if images else None,
            "seconds_per_image": sum(timed) / len(timed) if timed else None,
        }

    def reviews(aid: Any = ...) -> dict[str, Any]:
        mine = [m for m in outcome if aid is ... or (m in decided and decided[m][0] == aid)]
        n = {k: sum(1 for m in mine if outcome[m] == k) for k in ("accepted", "edited", "rejected")}
        elapsed = [decided[m][1] for m in mine if m in decided and decided[m][1] is not None]
        return _rates(n["accepted"], n["edited"], n["rejected"], elapsed)

    people = {a for a, _ in decided.values()} | set(done_by.values())
    by_annotator = []
    for aid in sorted(people, key=lambda a: (a is not None, names.get(a, ""))):
        mine = {i for i, a in done_by.items() if a == aid}
        by_annotator.append({
            "annotator": names.get(aid), **reviews(aid),
            "with_prefill": group(mine & prefilled), "without_prefill": group(mine - prefilled),
        })  # fmt: skip
    return {
        "proposals": len(ids),
        "pending": sum(1 for v in states.values() if v == "proposal"),
        **reviews(),
        "images_prefilled": len(prefilled),
        "with_prefill": group(done & prefilled),
        "without_prefill": group(done - prefilled),
        "by_annotator": by_annotator,
    }
