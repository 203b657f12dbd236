"""The machinery under :class:`segany.engine.store.Project`: the engine and transactions, ORM
rows turned into records, and the look-ups and checks the public methods share."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from .db import make_engine, upgrade
from .errors import InvalidInput, LeaseConflict, NotFound
from .models import AnnotatorRow, EventRow, ImageRow, MaskRow, ModelVersionRow
from .records import Annotator, EventRecord, ImageRecord, MaskRecord, ModelVersion

__all__ = ["UNSET", "AnnotatorRef", "ProjectBase", "token_hash", "utcnow"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Marks an argument that was not given (where None is a value: "leave unchanged").
UNSET: Any = _Unset()
#: An annotator given by record, name or id (None: no annotator).
AnnotatorRef = Annotator | str | int | None


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def token_hash(token: str) -> str:
    """The stored form of an annotator token: its sha256 hex digest."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ProjectBase:
    """Holds the project folder, its configuration and the database engine."""

    def __init__(
        self,
        root: Path,
        url: URL,
        config: dict[str, Any],
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.root = root
        self.config = config
        self._clock = clock or utcnow
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ------------------------------------------------------------------ conversions

    def _image_record(self, s: Session, row: ImageRow, num_masks: int | None = None) -> ImageRecord:
        holder = None
        live = row.lease_expires_at is not None and row.lease_expires_at > self._clock()
        if row.lease_holder_id is not None and live:
            holder = s.get(AnnotatorRow, row.lease_holder_id).name
        if num_masks is None:
            num_masks = s.scalar(select(func.count()).where(MaskRow.image_id == row.id))
        return ImageRecord(
            id=row.id,
            sha256=row.sha256,
            file_name=row.file_name,
            ext=row.ext,
            width=row.width,
            height=row.height,
            status=row.status,
            created_at=row.created_at,
            lease_holder=holder,
            lease_expires_at=row.lease_expires_at if holder else None,
            num_masks=int(num_masks or 0),
        )

    @staticmethod
    def _mask_record(s: Session, row: MaskRow) -> MaskRecord:
        annotator = None if row.annotator_id is None else s.get(AnnotatorRow, row.annotator_id)
        return MaskRecord(
            id=row.id,
            image_id=row.image_id,
            segmentation={"size": [row.height, row.width], "counts": row.counts},
            bbox=list(row.bbox),
            area=row.area,
            predicted_iou=row.predicted_iou,
            stability_score=row.stability_score,
            point_coords=row.point_coords,
            crop_box=row.crop_box,
            prompts=row.prompts,
            source=row.source,
            stage=row.stage,
            model_version_id=row.model_version_id,
            annotator=None if annotator is None else annotator.name,
            label=row.label,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
        )

    @staticmethod
    def _model_record(row: ModelVersionRow) -> ModelVersion:
        return ModelVersion(
            row.id, row.name, row.fingerprint, row.file, row.created_at,
            row.parent_id, row.dataset_version_id, row.evaluation,
        )  # fmt: skip

    def _annotator_id(self, s: Session, annotator: AnnotatorRef) -> int | None:
        if annotator is None:
            return None
        if isinstance(annotator, Annotator):
            annotator = annotator.id
        if isinstance(annotator, int) and not isinstance(annotator, bool):
            if s.get(AnnotatorRow, annotator) is None:
                raise NotFound(f"no annotator with id {annotator}")
            return annotator
        if isinstance(annotator, str):
            found = s.scalar(select(AnnotatorRow.id).where(AnnotatorRow.name == annotator))
            if found is None:
                raise NotFound(f"no annotator named {annotator!r}; add it with add_annotator")
            return found
        raise InvalidInput(f"annotator must be a name, an id or an Annotator; got {annotator!r}")

    def _image_row(self, s: Session, image_id: int) -> ImageRow:
        ok = isinstance(image_id, int) and not isinstance(image_id, bool)
        row = s.get(ImageRow, image_id) if ok else None
        if row is None:
            raise NotFound(f"no image with id {image_id!r}")
        return row

    def _is_prefilled(self, s: Session, image_id: int) -> bool:
        """Whether ``engine prefill`` has proposed masks for the image (a ``prefill`` event)."""
        query = select(EventRow.id).where(EventRow.kind == "prefill", EventRow.image_id == image_id)
        return s.scalar(query.limit(1)) is not None

    def _default_stage(self, s: Session, image_id: int | None, source: str = "manual") -> int:
        """The data-engine stage of work on an image when none is given: 3 for automatic
        masks, 2 for prefill masks and for everything annotators do on a prefilled image,
        else 1."""
        if source == "auto":
            return 3
        if source == "prefill" or (image_id is not None and self._is_prefilled(s, image_id)):
            return 2
        return 1

    def _event(self, s: Session, kind: str, **fields: Any) -> EventRow:
        row = EventRow(kind=kind, at=self._clock(), **fields)
        s.add(row)
        return row

    def _raise_leased(self, s: Session, row: ImageRow) -> None:
        holder = s.get(AnnotatorRow, row.lease_holder_id).name
        raise LeaseConflict(
            f"image {row.id} is leased to {holder!r} until {row.lease_expires_at.isoformat()}; "
            "take another image or wait until the lease expires",
            holder=holder,
            expires_at=row.lease_expires_at,
        )

    def _check_lease(self, s: Session, row: ImageRow, aid: int | None) -> None:
        """LeaseConflict when another annotator than ``aid`` holds a live lease on ``row``."""
        if row.lease_holder_id is None or row.lease_holder_id == aid:
            return
        if row.lease_expires_at is not None and row.lease_expires_at > self._clock():
            self._raise_leased(s, row)

    def _model_id(self, s: Session, model_version: ModelVersion | int | None) -> int | None:
        if model_version is None:
            return None
        mid = model_version.id if isinstance(model_version, ModelVersion) else model_version
        if isinstance(mid, bool) or not isinstance(mid, int) or s.get(ModelVersionRow, mid) is None:
            raise NotFound(f"no model version {model_version!r}; register it with register_model")
        return mid

    @staticmethod
    def _event_record(s: Session, row: EventRow) -> EventRecord:
        annotator = None if row.annotator_id is None else s.get(AnnotatorRow, row.annotator_id)
        return EventRecord(
            id=row.id,
            kind=row.kind,
            image_id=row.image_id,
            mask_id=row.mask_id,
            annotator=None if annotator is None else annotator.name,
            stage=row.stage,
            at=row.at,
            elapsed_ms=row.elapsed_ms,
            payload=row.payload,
        )
