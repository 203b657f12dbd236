"""Plain frozen records the project store returns (never ORM objects), safe to keep after the
transaction and to serialise. Datetimes are timezone-aware UTC."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AddReport",
    "Annotator",
    "DatasetVersion",
    "EventRecord",
    "ImageRecord",
    "MaskRecord",
    "ModelVersion",
]


@dataclass(frozen=True)
class Annotator:
    """An annotator (the token itself is only returned once, by ``add_annotator``)."""

    id: int
    name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class ModelVersion:
    """A model version masks are made with: ``fingerprint`` identifies the weights (the
    embedding cache is keyed by it), ``file`` is where they were loaded from (if a file). A
    retrained version has its ``parent_id``, the ``dataset_version_id`` it was trained on and
    its held-out ``evaluation`` (JSON, see :mod:`segany.engine.retrain`)."""

    id: int
    name: str
    fingerprint: str
    file: str | None
    created_at: dt.datetime
    parent_id: int | None = None
    dataset_version_id: int | None = None
    evaluation: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "file": self.file,
            "created_at": self.created_at.isoformat(),
            "parent_id": self.parent_id,
            "dataset_version_id": self.dataset_version_id,
            "evaluation": self.evaluation,
        }


@dataclass(frozen=True)
class DatasetVersion:
    """A frozen dataset version: ``name`` (``v0001``, ...), the ``content_hash`` of what it
    holds (the same content gives the same hash), its folder ``path`` (relative to the
    project folder), the data-engine ``stages`` its masks come from, the sha256 of its
    held-out images and its image and mask ``counts`` per split."""

    id: int
    name: str
    content_hash: str
    path: str
    stages: list[int]
    holdout: list[str]
    counts: dict[str, Any]
    created_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "content_hash": self.content_hash,
            "path": self.path,
            "stages": list(self.stages),
            "holdout": list(self.holdout),
            "counts": dict(self.counts),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class ImageRecord:
    """An image of the project. ``file_name`` is the user's name (metadata only); the file is
    ``images/<sha256[:2]>/<sha256><ext>``. ``width``/``height`` in pixels, EXIF orientation
    applied (as :func:`segany.io.image.load_image` reads it). ``lease_holder`` is the name of
    the annotator holding a live lease (None when free or expired)."""

    id: int
    sha256: str
    file_name: str
    ext: str
    width: int
    height: int
    status: str
    created_at: dt.datetime
    lease_holder: str | None = None
    lease_expires_at: dt.datetime | None = None
    num_masks: int = 0

    @property
    def relpath(self) -> str:
        """The file's path relative to the project folder."""
        return f"images/{self.sha256[:2]}/{self.sha256}{self.ext}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "status": self.status,
            "num_masks": self.num_masks,
            "lease_holder": self.lease_holder,
            "lease_expires_at": None
            if self.lease_expires_at is None
            else self.lease_expires_at.isoformat(),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class MaskRecord:
    """A mask: ``segmentation`` is its COCO compressed RLE ``{"size": [H, W], "counts": str}``
    (canonical: the encoding pycocotools gives the decoded mask), ``bbox`` XYWH (pycocotools
    ``toBbox``), ``area`` in pixels, ``point_coords`` ``[[x, y], ...]`` pixels, ``crop_box``
    XYWH (None: the whole image). ``annotator`` is the annotator's name."""

    id: int
    image_id: int
    segmentation: dict[str, Any]
    bbox: list[float]
    area: int
    predicted_iou: float | None
    stability_score: float | None
    point_coords: list[list[float]] | None
    crop_box: list[float] | None
    prompts: Any
    source: str
    stage: int
    model_version_id: int | None
    annotator: str | None
    label: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int

    def to_sa1b(self) -> dict[str, Any]:
        """The SA-1B annotation fields (``id``, ``segmentation``, ``bbox``, ``area``,
        ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``; scores None
        and ``point_coords`` ``[]`` when unknown, ``crop_box`` None for the whole image) plus
        ``image_id``, ``source``, ``stage``, ``label``, ``annotator``, ``model_version_id``,
        ``version``, ``created_at`` and ``updated_at`` (ISO 8601) and ``prompts``."""
        return {
            "id": self.id,
            "image_id": self.image_id,
            "segmentation": dict(self.segmentation),
            "bbox": list(self.bbox),
            "area": self.area,
            "predicted_iou": self.predicted_iou,
            "stability_score": self.stability_score,
            "point_coords": [] if self.point_coords is None else self.point_coords,
            "crop_box": self.crop_box,
            "source": self.source,
            "stage": self.stage,
            "label": self.label,
            "annotator": self.annotator,
            "model_version_id": self.model_version_id,
            "version": self.version,
            "prompts": self.prompts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class EventRecord:
    """An annotation event (``elapsed_ms``: for ``accept``/``edit``, the time the annotator
    spent on the mask, first prompt to accept)."""

    id: int
    kind: str
    image_id: int | None
    mask_id: int | None
    annotator: str | None
    stage: int
    at: dt.datetime
    elapsed_ms: int | None
    payload: Any


@dataclass(frozen=True)
class AddReport:
    """What :meth:`Project.add_paths` did: images added, images already in the project (same
    content), and ``(path, reason)`` for every file skipped."""

    added: list[ImageRecord] = field(default_factory=list)
    existing: list[ImageRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
