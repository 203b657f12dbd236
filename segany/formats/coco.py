"""COCO instances JSON export for a folder of segmented images.

:class:`CocoWriter` collects images and their masks and writes one standard COCO
"instances" file (``images``, ``annotations``, ``categories``, ``info``, ``licenses``) that
``pycocotools.coco.COCO`` loads and ``COCO.annToMask`` decodes back to the masks::

    writer = CocoWriter()                                   # or segmentation="polygon"
    for path, records in results:                           # records: generator output
        writer.add_image(path.name, width, height, annotations=records)
    writer.write("annotations/instances.json")

Each annotation gets ``id`` (unique, from 1), ``image_id``, ``category_id`` (default 1,
category ``"object"``), ``iscrowd`` 0, ``segmentation`` (COCO RLE with ``str`` counts, or
polygons), ``area`` (pixels of the stored segmentation) and ``bbox`` (XYWH tight box of the
stored segmentation, pycocotools ``toBbox``: a single pixel at ``(x, y)`` is ``[x, y, 1, 1]``);
``predicted_iou`` and ``stability_score`` are kept when the record has them.
Only numpy, pycocotools (and cv2 for polygons when installed); no torch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..io.files import write_json_atomic
from .polygons import mask_to_polygons, polygons_to_rle
from .rle import RLE, decode_coco_rle, rle_area, rle_to_bbox
from .segmentation import as_coco_rle
from .values import integer, number, plain

__all__ = ["DEFAULT_CATEGORIES", "CocoWriter"]

#: The single category used when none is given.
DEFAULT_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "object", "supercategory": "object"},
)

_KEPT_KEYS = ("predicted_iou", "stability_score")


class CocoWriter:
    """Accumulates images and mask annotations; :meth:`write` saves a COCO instances JSON.

    Args:
        segmentation: ``"rle"`` (COCO compressed RLE, exact) or ``"polygon"`` (outer
            boundaries via :func:`segany.formats.polygons.mask_to_polygons`; holes are filled,
            and a mask that yields no polygon, e.g. an empty one, is stored as RLE).
        categories: COCO categories (dicts with int ``id`` and str ``name``); default one
            category ``{"id": 1, "name": "object"}``.
        info: the ``info`` object; default a short description with today's date.
        licenses: the ``licenses`` list (default empty).
        polygon_tolerance, polygon_min_area: passed to ``mask_to_polygons`` as ``tolerance``
            (pixels) and ``min_area`` in polygon mode.
    """

    def __init__(
        self,
        *,
        segmentation: str = "rle",
        categories: Sequence[Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
        licenses: Sequence[Mapping[str, Any]] | None = None,
        polygon_tolerance: float = 1.0,
        polygon_min_area: float = 0,
    ) -> None:
        if segmentation not in ("rle", "polygon"):
            raise ValueError(f"segmentation must be 'rle' or 'polygon'; got {segmentation!r}")
        self.segmentation = segmentation
        self.polygon_tolerance = polygon_tolerance
        self.polygon_min_area = polygon_min_area
        cats = [plain(dict(c)) for c in (DEFAULT_CATEGORIES if categories is None else categories)]
        if not cats:
            raise ValueError("categories must not be empty")
        for c in cats:
            if not isinstance(c.get("name"), str):
                raise ValueError(f"every category needs a str 'name'; got {c!r}")
            c["id"] = integer(c.get("id"), f"category {c.get('name')!r} id")
        ids = [c["id"] for c in cats]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate category ids in {ids}")
        self.categories: list[dict[str, Any]] = cats
        today = datetime.date.today()
        self.info: dict[str, Any] = (
            plain(dict(info))
            if info is not None
            else {
                "description": "masks exported by segany",
                "version": "1.0",
                "year": today.year,
                "contributor": "segany",
                "date_created": today.isoformat(),
            }
        )
        self.licenses: list[dict[str, Any]] = [plain(dict(x)) for x in (licenses or ())]
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._images_by_id: dict[int, dict[str, Any]] = {}
        self._file_names: set[str] = set()
        self._next_image_id = 1
        self._next_ann_id = 1

    # ------------------------------------------------------------------ images

    def add_image(
        self,
        file_name: str,
        width: int,
        height: int,
        *,
        id: int | None = None,
        annotations: Sequence[Any] | None = None,
        **extra: Any,
    ) -> int:
        """Add an image (``file_name`` relative to the image folder, size in pixels) and,
        optionally, its mask records (see :meth:`add_annotation`). ``id`` defaults to the next
        free integer; ids and file names must be unique. ``extra`` keys (e.g. ``license``,
        ``coco_url``) are stored in the image object. Returns the image id."""
        if not isinstance(file_name, str) or not file_name:
            raise ValueError(f"file_name must be a non-empty string; got {file_name!r}")
        if file_name in self._file_names:
            raise ValueError(f"image {file_name!r} was already added")
        width = integer(width, f"{file_name}: width", minimum=1)
        height = integer(height, f"{file_name}: height", minimum=1)
        image_id = self._next_image_id if id is None else integer(id, f"{file_name}: id")
        if image_id in self._images_by_id:
            raise ValueError(f"image id {image_id} is already used")
        image = {
            **plain(extra),
            "id": image_id,
            "file_name": file_name,
            "width": width,
            "height": height,
        }
        self.images.append(image)
        self._images_by_id[image_id] = image
        self._file_names.add(file_name)
        self._next_image_id = max(self._next_image_id, image_id + 1)
        if annotations is not None:
            self.add_annotations(image_id, annotations)
        return image_id

    # ------------------------------------------------------------------ annotations

    def add_annotations(self, image_id: int, records: Sequence[Any]) -> list[int]:
        """Add several mask records to an image; returns their annotation ids."""
        if isinstance(records, Mapping) or not isinstance(records, Sequence):
            raise ValueError("records must be a list of mask records")
        return [self.add_annotation(image_id, r) for r in records]

    def add_annotation(self, image_id: int, record: Any, *, category_id: int | None = None) -> int:
        """Add one mask to an already added image; returns the annotation id.

        ``record`` is a mask record (a dict with ``segmentation``: ``(H, W)`` bool mask,
        uncompressed RLE, COCO RLE or COCO polygons; optional ``category_id``,
        ``predicted_iou``, ``stability_score``) or just the ``(H, W)`` mask. The segmentation
        size must equal the image's ``[height, width]``.
        """
        image = self._images_by_id.get(image_id)
        if image is None:
            raise ValueError(f"unknown image id {image_id!r}: add_image first")
        where = f"{image['file_name']}: annotation"
        if isinstance(record, Mapping):
            if "segmentation" not in record:
                raise ValueError(f"{where} has no 'segmentation'")
            segmentation = record["segmentation"]
        else:
            segmentation, record = record, {}
        if category_id is None:
            category_id = record.get("category_id", self.categories[0]["id"])
        category_id = integer(category_id, f"{where} category_id")
        if category_id not in {c["id"] for c in self.categories}:
            raise ValueError(f"{where}: category_id {category_id} is not a known category")
        h, w = image["height"], image["width"]
        try:
            rle = as_coco_rle(segmentation, h, w)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        stored: RLE | list[list[float]] = rle
        if self.segmentation == "polygon":
            polygons = mask_to_polygons(
                decode_coco_rle(rle),
                tolerance=self.polygon_tolerance,
                min_area=self.polygon_min_area,
            )
            if polygons:
                stored = polygons
                rle = polygons_to_rle(polygons, h, w)  # area/bbox of what is stored
        ann: dict[str, Any] = {
            "id": self._next_ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "iscrowd": 0,
            "segmentation": stored,
            "area": rle_area(rle),
            "bbox": rle_to_bbox(rle),
        }
        for key in _KEPT_KEYS:
            if key in record:
                ann[key] = number(record[key], f"{where} {key}")
        self.annotations.append(ann)
        self._next_ann_id += 1
        return ann["id"]

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        """The COCO instances dict (``info``, ``licenses``, ``images``, ``annotations``,
        ``categories``), plain JSON-serialisable Python values."""
        return {
            "info": self.info,
            "licenses": self.licenses,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as compact JSON to ``path`` atomically (see
        :func:`segany.io.files.write_json_atomic`); the folder must exist."""
        write_json_atomic(path, self.to_dict())
