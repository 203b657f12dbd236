"""The masks and events methods of :class:`segany.engine.store.Project`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import checks
from .base import UNSET, AnnotatorRef, ProjectBase
from .errors import InvalidInput, NotFound, VersionConflict
from .models import EventRow, ImageRow, MaskRow
from .records import EventRecord, MaskRecord, ModelVersion
from .stats import compute_stats
from .timeline import compute_timeline

__all__ = ["MaskMethods"]

_UNSET = UNSET


class MaskMethods(ProjectBase):
    """Masks (add, update with a version check, delete, list), events and statistics."""

    # ------------------------------------------------------------------ masks

    def add_mask(
        self,
        image_id: int,
        *,
        segmentation: Any,
        annotator: AnnotatorRef = None,
        source: str = "manual",
        stage: int | None = None,
        predicted_iou: float | None = None,
        stability_score: float | None = None,
        point_coords: list[list[float]] | None = None,
        crop_box: list[float] | None = None,
        prompts: Any = None,
        label: str | None = None,
        model_version: ModelVersion | int | None = None,
        elapsed_ms: int | None = None,
    ) -> MaskRecord:
        """Store an accepted mask and its ``accept`` event (with ``elapsed_ms``, the time
        spent on it). ``segmentation`` is a COCO RLE of the image's size (an uncompressed RLE,
        ``(H, W)`` bool mask or COCO polygons are converted); it is stored canonically with
        its area and XYWH bbox. ``stage`` defaults to the image's: 2 on a prefilled image (3
        for ``source="auto"``), else 1. ``point_coords`` are ``[[x, y], ...]`` pixels, ``crop_box``
        XYWH, ``prompts`` any JSON. Raises InvalidInput (bad values, a malformed or empty RLE
        or one of another size), NotFound, LeaseConflict (the image is leased to another)."""
        fields = {
            "source": checks.check_source(source),
            "stage": None if stage is None else checks.check_stage(stage),
            "predicted_iou": checks.check_score(predicted_iou, "predicted_iou"),
            "stability_score": checks.check_score(stability_score, "stability_score"),
            "point_coords": checks.check_points(point_coords),
            "crop_box": checks.check_box(crop_box),
            "prompts": checks.check_json(prompts, "prompts"),
            "label": checks.check_label(label),
        }
        elapsed_ms = checks.check_elapsed(elapsed_ms)
        with self._tx() as s:
            image = self._image_row(s, image_id)
            rle, area, bbox = checks.canonical_rle(segmentation, image.height, image.width)
            aid = self._annotator_id(s, annotator)
            self._check_lease(s, image, aid)
            if fields["stage"] is None:
                fields["stage"] = self._default_stage(s, image.id, fields["source"])
            now = self._clock()
            row = MaskRow(
                image_id=image.id,
                counts=rle["counts"],
                height=image.height,
                width=image.width,
                bbox=bbox,
                area=area,
                model_version_id=self._model_id(s, model_version),
                annotator_id=aid,
                created_at=now,
                updated_at=now,
                version=1,
                **fields,
            )
            s.add(row)
            s.flush()
            self._event(
                s, "accept", image_id=image.id, mask_id=row.id, annotator_id=aid,
                stage=row.stage, elapsed_ms=elapsed_ms,
            )  # fmt: skip
            return self._mask_record(s, row)

    def update_mask(
        self,
        mask_id: int,
        *,
        version: int,
        annotator: AnnotatorRef = None,
        segmentation: Any = _UNSET,
        label: str | None = _UNSET,
        predicted_iou: float | None = _UNSET,
        stability_score: float | None = _UNSET,
        point_coords: list[list[float]] | None = _UNSET,
        prompts: Any = _UNSET,
        source: str = _UNSET,
        elapsed_ms: int | None = None,
    ) -> MaskRecord:
        """Change a mask that is at ``version`` (the fields given; its version goes up by one)
        and record an ``edit`` event. Raises VersionConflict when the mask has changed since
        ``version`` (nothing is written then), NotFound, InvalidInput, LeaseConflict."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(f"version must be the integer version being edited; got {version!r}")
        values: dict[str, Any] = {}
        if label is not _UNSET:
            values["label"] = checks.check_label(label)
        if predicted_iou is not _UNSET:
            values["predicted_iou"] = checks.check_score(predicted_iou, "predicted_iou")
        if stability_score is not _UNSET:
            values["stability_score"] = checks.check_score(stability_score, "stability_score")
        if point_coords is not _UNSET:
            values["point_coords"] = checks.check_points(point_coords)
        if prompts is not _UNSET:
            values["prompts"] = checks.check_json(prompts, "prompts")
        if source is not _UNSET:
            values["source"] = checks.check_source(source)
        elapsed_ms = checks.check_elapsed(elapsed_ms)
        with self._tx() as s:
            row = self._mask_row(s, mask_id)
            image = s.get(ImageRow, row.image_id)
            if segmentation is not _UNSET:
                rle, area, bbox = checks.canonical_rle(segmentation, image.height, image.width)
                values.update(counts=rle["counts"], area=area, bbox=bbox)
            aid = self._annotator_id(s, annotator)
            self._check_lease(s, image, aid)
            done = s.execute(
                update(MaskRow)
                .where(MaskRow.id == mask_id, MaskRow.version == version)
                .values(**values, version=MaskRow.version + 1, updated_at=self._clock())
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 0:
                self._raise_stale(s, mask_id, version)
            s.expire(row)
            row = s.get(MaskRow, mask_id)
            self._event(
                s, "edit", image_id=row.image_id, mask_id=row.id, annotator_id=aid,
                stage=row.stage, elapsed_ms=elapsed_ms,
                payload={"version": row.version, "fields": sorted(values)},
            )  # fmt: skip
            return self._mask_record(s, row)

    def delete_mask(
        self, mask_id: int, *, version: int | None = None, annotator: AnnotatorRef = None
    ) -> None:
        """Delete a mask (only if still at ``version`` when given: VersionConflict otherwise)
        and record a ``delete`` event whose payload keeps the deleted mask."""
        with self._tx() as s:
            row = self._mask_row(s, mask_id)
            aid = self._annotator_id(s, annotator)
            self._check_lease(s, s.get(ImageRow, row.image_id), aid)
            kept = self._mask_record(s, row).to_sa1b()
            query = delete(MaskRow).where(MaskRow.id == mask_id)
            if version is not None:
                query = query.where(MaskRow.version == version)
            done = s.execute(query.execution_options(synchronize_session=False))
            if done.rowcount == 0:
                self._raise_stale(s, mask_id, version)
            s.expunge(row)
            self._event(
                s, "delete", image_id=kept["image_id"], mask_id=mask_id, annotator_id=aid,
                stage=kept["stage"], payload={"mask": kept},
            )  # fmt: skip

    def _mask_row(self, s: Session, mask_id: int) -> MaskRow:
        ok = isinstance(mask_id, int) and not isinstance(mask_id, bool)
        row = s.get(MaskRow, mask_id) if ok else None
        if row is None:
            raise NotFound(f"no mask with id {mask_id!r}")
        return row

    def _raise_stale(self, s: Session, mask_id: int, version: int | None) -> None:
        current = s.scalar(select(MaskRow.version).where(MaskRow.id == mask_id))
        if current is None:
            raise NotFound(f"no mask with id {mask_id!r} (deleted meanwhile)")
        raise VersionConflict(
            f"mask {mask_id} is at version {current}, not {version}: it was changed by someone "
            "else; reload it and apply the change to the current version",
            current=current,
        )

    def get_mask(self, mask_id: int) -> MaskRecord:
        with self._tx() as s:
            return self._mask_record(s, self._mask_row(s, mask_id))

    def list_masks(self, image_id: int) -> list[MaskRecord]:
        """The image's masks in id order (NotFound if there is no such image)."""
        with self._tx() as s:
            self._image_row(s, image_id)
            rows = s.scalars(
                select(MaskRow).where(MaskRow.image_id == image_id).order_by(MaskRow.id)
            )
            return [self._mask_record(s, r) for r in rows]

    # ------------------------------------------------------------------ events, stats

    def record_event(
        self,
        kind: str,
        *,
        image_id: int | None = None,
        mask_id: int | None = None,
        annotator: AnnotatorRef = None,
        stage: int | None = None,
        elapsed_ms: int | None = None,
        payload: Any = None,
    ) -> EventRecord:
        """Record an annotation event (``kind`` one of :data:`checks.EVENT_KINDS`; the server
        records a ``prompt`` per click or box). ``stage`` defaults to the image's: 2 on a
        prefilled image, else 1."""
        kind = checks.check_choice(kind, checks.EVENT_KINDS, "event kind")
        stage = None if stage is None else checks.check_stage(stage)
        elapsed_ms = checks.check_elapsed(elapsed_ms)
        payload = checks.check_json(payload, "payload")
        if mask_id is not None and (isinstance(mask_id, bool) or not isinstance(mask_id, int)):
            raise InvalidInput(f"mask_id must be an integer or null; got {mask_id!r}")
        with self._tx() as s:
            if image_id is not None:
                self._image_row(s, image_id)
            if stage is None:
                stage = self._default_stage(s, image_id)
            aid = self._annotator_id(s, annotator)
            row = self._event(
                s, kind, image_id=image_id, mask_id=mask_id, annotator_id=aid, stage=stage,
                elapsed_ms=elapsed_ms, payload=payload,
            )  # fmt: skip
            s.flush()
            return self._event_record(s, row)

    def list_events(
        self, *, image_id: int | None = None, kind: str | None = None
    ) -> list[EventRecord]:
        """Events in order (of one image and/or kind if given)."""
        query = select(EventRow).order_by(EventRow.id)
        if image_id is not None:
            query = query.where(EventRow.image_id == image_id)
        if kind is not None:
            query = query.where(EventRow.kind == kind)
        with self._tx() as s:
            return [self._event_record(s, r) for r in s.scalars(query)]

    def stats(self) -> dict[str, Any]:
        """Per data-engine stage and annotator: masks, images done, seconds per mask, masks per
        image, clicks per mask (see :func:`.stats.compute_stats`), and image counts per
        status."""
        with self._tx() as s:
            return compute_stats(s)

    def timeline(
        self, *, bucket: str = "auto", stage: int | None = None, annotator: str | None = None
    ) -> dict[str, Any]:
        """Seconds per mask, clicks per mask, masks per image and masks accepted per (stage,
        annotator) and time bucket, and per model version (see
        :func:`.timeline.compute_timeline`). Raises InvalidInput for an unknown ``bucket``
        (``hour``, ``day``, ``week``, ``auto``), ``stage`` or ``annotator`` name."""
        with self._tx() as s:
            return compute_timeline(s, bucket=bucket, stage=stage, annotator=annotator)
