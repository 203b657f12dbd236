"""SQLAlchemy 2 ORM models of a project's database (SQLite or PostgreSQL).

The migrations in ``migrations/versions`` build exactly this schema (a test compares them).
Datetimes are timezone-aware UTC (:class:`UTCDateTime`); JSON columns use SQLAlchemy's
portable ``JSON`` type. Masks store COCO compressed RLE (``counts`` string and the image's
``[height, width]``); boxes are XYWH in pixels, points ``[x, y]`` (x along the width).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "IMAGE_STATUSES",
    "MASK_SOURCES",
    "STAGES",
    "AnnotatorRow",
    "Base",
    "DatasetVersionRow",
    "EventRow",
    "ImageRow",
    "MaskRow",
    "ModelVersionRow",
    "UTCDateTime",
]

#: Allowed ``images.status`` values.
IMAGE_STATUSES = ("new", "in_progress", "done", "skipped")
#: Allowed ``masks.source`` values: drawn by an annotator, prefilled by the model and checked
#: (data-engine stage 2), or fully automatic (stage 3).
MASK_SOURCES = ("manual", "prefill", "auto")
#: Data-engine stages (1 assisted-manual, 2 semi-automatic, 3 fully automatic).
STAGES = (1, 2, 3)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend: stored as UTC (naive on SQLite, whose
    text values then sort in time order), returned with ``tzinfo=UTC``; naive input refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AnnotatorRow(Base):
    __tablename__ = "annotators"
    __table_args__ = (Index(None, "token_hash", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # sha256 hex of the annotator's token (the token itself is never stored)
    token_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class DatasetVersionRow(Base):
    """A frozen dataset version (a snapshot of accepted masks in SA-1B layout at ``path``,
    relative to the project folder). ``holdout`` lists the sha256 of the held-out images,
    ``counts`` the images and masks per split."""

    __tablename__ = "dataset_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    stages: Mapped[list[int]] = mapped_column(JSON)
    holdout: Mapped[list[str]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ModelVersionRow(Base):
    """A model version; a retrained one has its ``parent_id``, the ``dataset_version_id`` it
    was trained on and its held-out ``evaluation`` (JSON)."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(200), unique=True)
    file: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    evaluation: Mapped[Any | None] = mapped_column(JSON)


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("status IN ('new', 'in_progress', 'done', 'skipped')", name="status"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    file_name: Mapped[str] = mapped_column(Text)
    ext: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_holder_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class MaskRow(Base):
    __tablename__ = "masks"
    __table_args__ = (
        CheckConstraint("source IN ('manual', 'prefill', 'auto')", name="source"),
        CheckConstraint("stage IN (1, 2, 3)", name="stage"),
        Index(None, "image_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    counts: Mapped[str] = mapped_column(Text)  # COCO compressed RLE counts
    height: Mapped[int] = mapped_column(Integer)  # RLE size [height, width]
    width: Mapped[int] = mapped_column(Integer)
    bbox: Mapped[list[float]] = mapped_column(JSON)  # XYWH, pycocotools toBbox
    area: Mapped[int] = mapped_column(Integer)
    predicted_iou: Mapped[float | None] = mapped_column(Float)
    stability_score: Mapped[float | None] = mapped_column(Float)
    point_coords: Mapped[list[list[float]] | None] = mapped_column(JSON)
    crop_box: Mapped[list[float] | None] = mapped_column(JSON)
    prompts: Mapped[Any | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))
    stage: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer)


class EventRow(Base):
    """An annotation event. ``mask_id`` is a plain integer (no foreign key) so that the
    history of a deleted mask stays."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "image_id"), Index(None, "annotator_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    mask_id: Mapped[int | None] = mapped_column(Integer)
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    stage: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    elapsed_ms: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[Any | None] = mapped_column(JSON)
