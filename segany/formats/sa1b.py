"""SA-1B per-image annotation JSON (the format of Meta's SA-1B release), written and read.

One file per image::

    {
      "image": {"image_id": int, "width": W, "height": H, "file_name": "sa_1.jpg"},
      "annotations": [
        {
          "id": int,
          "segmentation": {"size": [H, W], "counts": str},   # COCO compressed RLE
          "bbox": [x, y, w, h],                               # XYWH, pixels
          "area": int,                                        # pixels inside the mask
          "predicted_iou": float,
          "stability_score": float,
          "crop_box": [x, y, w, h],                           # XYWH crop the mask came from
          "point_coords": [[x, y]]                            # prompt point(s), pixels
        },
        ...
      ]
    }

:func:`write_sa1b_json` takes mask records like the official ``SamAutomaticMaskGenerator``
output (``segmentation`` as a ``(H, W)`` bool mask, an uncompressed RLE or a COCO RLE), writes
plain JSON (numpy scalars converted) atomically. :func:`read_sa1b_json` validates a file and
:func:`sa1b_masks` decodes its masks. Only numpy and pycocotools (no torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..io.files import write_json_atomic
from .rle import RLE, checked_coco_rle, decode_coco_rle, rle_area, rle_to_bbox
from .segmentation import as_coco_rle
from .values import integer, number, plain

__all__ = [
    "SA1B_ANNOTATION_KEYS",
    "SA1B_IMAGE_KEYS",
    "read_sa1b_json",
    "sa1b_masks",
    "write_sa1b_json",
]

#: Keys of the ``"image"`` object.
SA1B_IMAGE_KEYS = ("image_id", "width", "height", "file_name")
#: Keys every annotation carries.
SA1B_ANNOTATION_KEYS = (
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
)


# --------------------------------------------------------------------------- values


def _box(value: Any, what: str) -> list[float]:
    value = plain(value)
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"{what} must be [x, y, w, h] (4 numbers); got {value!r}")
    return [number(v, what) for v in value]


def _points(value: Any, what: str) -> list[list[float]]:
    value = plain(value)
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ValueError(f"{what} must be a list of [x, y] pairs; got {value!r}")
    return [[number(x, what), number(y, what)] for x, y in value]


def _image_id(value: Any, what: str) -> int | str:
    value = plain(value)
    if isinstance(value, str):
        return value
    return integer(value, what)


# --------------------------------------------------------------------------- writing


def _annotation(rec: Any, where: str, height: int, width: int, ann_id: Any) -> dict[str, Any]:
    if not isinstance(rec, Mapping):
        raise ValueError(f"{where} must be a dict (a mask record); got {type(rec).__name__}")
    if "segmentation" not in rec:
        raise ValueError(f"{where} has no 'segmentation'")
    try:
        rle = as_coco_rle(rec["segmentation"], height, width)
    except ValueError as e:
        raise ValueError(f"{where}.segmentation: {e}") from None
    area = rle_area(rle)
    if "area" in rec and integer(rec["area"], f"{where}.area") != area:
        raise ValueError(f"{where}.area is {rec['area']} but its segmentation has {area} pixels")
    for key in ("predicted_iou", "stability_score"):
        if key not in rec:
            raise ValueError(f"{where} has no {key!r}")
    return {
        "id": integer(ann_id, f"{where}.id"),
        "segmentation": rle,
        "bbox": _box(rec["bbox"], f"{where}.bbox") if "bbox" in rec else rle_to_bbox(rle),
        "area": area,
        "predicted_iou": number(rec["predicted_iou"], f"{where}.predicted_iou"),
        "stability_score": number(rec["stability_score"], f"{where}.stability_score"),
        "crop_box": _box(rec.get("crop_box", [0, 0, width, height]), f"{where}.crop_box"),
        "point_coords": _points(rec.get("point_coords", []), f"{where}.point_coords"),
    }


def write_sa1b_json(
    path: str | os.PathLike,
    *,
    image_id: int | str,
    file_name: str,
    width: int,
    height: int,
    annotations: Sequence[Mapping[str, Any]],
) -> None:
    """Write one image's masks as an SA-1B JSON file, atomically (see
    :func:`segany.io.files.write_json_atomic`).

    Args:
        path: the ``.json`` file to write (its folder must exist).
        image_id, file_name, width, height: the ``"image"`` object (``width``/``height`` in
            pixels; every segmentation must have ``size == [height, width]``).
        annotations: mask records as the official automatic mask generator returns them:
            ``segmentation`` (required: ``(H, W)`` bool mask, uncompressed RLE or COCO RLE),
            ``predicted_iou`` and ``stability_score`` (required numbers), ``bbox`` (XYWH; taken
            as given, computed with ``pycocotools.mask.toBbox`` when absent; note that the
            official generator's boxes are one pixel narrower than toBbox's: ``w = x_max -
            x_min``), ``area`` (checked against the mask's pixel count; computed when absent),
            ``crop_box`` (XYWH; default the whole image), ``point_coords`` (``[[x, y]]``;
            default ``[]``) and optionally ``id`` (default: the record's index).

    Numpy/torch scalars and arrays are stored as plain JSON numbers and lists; segmentations
    as COCO RLE with ``str`` counts. Raises ValueError on missing or malformed fields, NaN or
    infinite numbers, or duplicate ids; nothing is written then.
    """
    where = os.fspath(path)
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where}: file_name must be a non-empty string; got {file_name!r}")
    width = integer(width, f"{where}: width", minimum=1)
    height = integer(height, f"{where}: height", minimum=1)
    if isinstance(annotations, Mapping | str | bytes) or not isinstance(annotations, Sequence):
        raise ValueError(f"{where}: annotations must be a list of mask records")
    anns = []
    for i, rec in enumerate(annotations):
        ann_id = rec.get("id", i) if isinstance(rec, Mapping) else i
        anns.append(_annotation(rec, f"{where}: annotations[{i}]", height, width, ann_id))
    _check_unique_ids(anns, where)
    record = {
        "image": {
            "image_id": _image_id(image_id, f"{where}: image_id"),
            "width": width,
            "height": height,
            "file_name": file_name,
        },
        "annotations": anns,
    }
    write_json_atomic(path, record)


def _check_unique_ids(anns: Sequence[Mapping[str, Any]], where: str) -> None:
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{where}: duplicate annotation ids {dup}")


# --------------------------------------------------------------------------- reading


def read_sa1b_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an SA-1B JSON file.

    Returns the parsed dict (``{"image": {...}, "annotations": [...]}``, see the module
    docstring) unchanged. Raises ValueError, naming the file and the offending field, when
    the file is not JSON, a key of :data:`SA1B_IMAGE_KEYS` or :data:`SA1B_ANNOTATION_KEYS` is
    missing, a value has the wrong type, a segmentation is not a valid COCO RLE of size
    ``[height, width]``, or annotation ids repeat.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not a valid JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in ("image", "annotations"):
        if key not in data:
            raise ValueError(f"{where}: missing top-level key {key!r}")
    image = data["image"]
    if not isinstance(image, dict):
        raise ValueError(f"{where}: 'image' must be an object")
    for key in SA1B_IMAGE_KEYS:
        if key not in image:
            raise ValueError(f"{where}: 'image' is missing {key!r}")
    _image_id(image["image_id"], f"{where}: image.image_id")
    width = integer(image["width"], f"{where}: image.width", minimum=1)
    height = integer(image["height"], f"{where}: image.height", minimum=1)
    if not isinstance(image["file_name"], str):
        raise ValueError(f"{where}: image.file_name must be a string")
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise ValueError(f"{where}: 'annotations' must be a list")
    for i, ann in enumerate(anns):
        at = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{at} must be an object")
        for key in SA1B_ANNOTATION_KEYS:
            if key not in ann:
                raise ValueError(f"{at} is missing {key!r}")
        integer(ann["id"], f"{at}.id")
        seg = ann["segmentation"]
        try:
            checked, _ = checked_coco_rle(seg)
        except ValueError as e:
            raise ValueError(f"{at}.segmentation: {e}") from None
        if not isinstance(seg["counts"], str):
            raise ValueError(f"{at}.segmentation.counts must be a string (COCO RLE)")
        if checked["size"] != [height, width]:
            raise ValueError(
                f"{at}.segmentation size {checked['size']} != image [height, width]"
                f" {[height, width]}"
            )
        _box(ann["bbox"], f"{at}.bbox")
        integer(ann["area"], f"{at}.area", minimum=0)
        number(ann["predicted_iou"], f"{at}.predicted_iou")
        number(ann["stability_score"], f"{at}.stability_score")
        _box(ann["crop_box"], f"{at}.crop_box")
        _points(ann["point_coords"], f"{at}.point_coords")
    _check_unique_ids(anns, where)
    return data


def sa1b_masks(record: Mapping[str, Any]) -> np.ndarray:
    """Decode all masks of an SA-1B record (as :func:`read_sa1b_json` returns it) to an
    ``(N, H, W)`` bool array, in annotation order; ``(0, H, W)`` when there are none."""
    try:
        height, width = int(record["image"]["height"]), int(record["image"]["width"])
        anns = record["annotations"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an SA-1B record (missing {e})") from None
    if not anns:
        return np.zeros((0, height, width), dtype=bool)
    rles: list[RLE] = [a["segmentation"] for a in anns]
    masks = decode_coco_rle(rles)
    if masks.shape[1:] != (height, width):
        raise ValueError(
            f"segmentation size {list(masks.shape[1:])} != image [height, width] {[height, width]}"
        )
    return masks
