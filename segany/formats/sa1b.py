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

import contextlib
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .rle import RLE, _coco_rle_checked, as_coco_rle, decode_coco_rle, rle_area, rle_to_bbox

__all__ = [
    "SA1B_ANNOTATION_KEYS",
    "SA1B_IMAGE_KEYS",
    "read_sa1b_json",
    "sa1b_masks",
    "write_json_atomic",
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


# --------------------------------------------------------------------------- plain values


def _plain(value: Any) -> Any:
    """``value`` with numpy (or torch) scalars/arrays turned into Python ints/floats/lists."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors (no torch import needed)
        return _plain(value.tolist())
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise ValueError(f"cannot store a {type(value).__name__} in JSON: {value!r}")


def _number(value: Any, what: str) -> float:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return float(value)


def _integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    value = _plain(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}; got {value}")
    return value


def _box(value: Any, what: str) -> list[float]:
    value = _plain(value)
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"{what} must be [x, y, w, h] (4 numbers); got {value!r}")
    return [_number(v, what) for v in value]


def _points(value: Any, what: str) -> list[list[float]]:
    value = _plain(value)
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ValueError(f"{what} must be a list of [x, y] pairs; got {value!r}")
    return [[_number(x, what), _number(y, what)] for x, y in value]


def _image_id(value: Any, what: str) -> int | str:
    value = _plain(value)
    if isinstance(value, str):
        return value
    return _integer(value, what)


# --------------------------------------------------------------------------- atomic JSON


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Serialise ``obj`` to compact JSON (NaN/inf refused) and write it to ``path``
    atomically: into a unique temporary file in the same folder, flushed and fsynced, then
    ``os.replace``-d onto ``path``. Readers see the old file or the complete new one; on any
    error the temporary file is removed and ``path`` is left as it was. The folder must
    exist."""
    try:
        data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot write {os.fspath(path)!s} as JSON: {e}") from None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
    if "area" in rec and _integer(rec["area"], f"{where}.area") != area:
        raise ValueError(f"{where}.area is {rec['area']} but its segmentation has {area} pixels")
    for key in ("predicted_iou", "stability_score"):
        if key not in rec:
            raise ValueError(f"{where} has no {key!r}")
    return {
        "id": _integer(ann_id, f"{where}.id"),
        "segmentation": rle,
        "bbox": _box(rec["bbox"], f"{where}.bbox") if "bbox" in rec else rle_to_bbox(rle),
        "area": area,
        "predicted_iou": _number(rec["predicted_iou"], f"{where}.predicted_iou"),
        "stability_score": _number(rec["stability_score"], f"{where}.stability_score"),
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
    :func:`write_json_atomic`).

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
    width = _integer(width, f"{where}: width", minimum=1)
    height = _integer(height, f"{where}: height", minimum=1)
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
    width = _integer(image["width"], f"{where}: image.width", minimum=1)
    height = _integer(image["height"], f"{where}: image.height", minimum=1)
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
        _integer(ann["id"], f"{at}.id")
        seg = ann["segmentation"]
        try:
            checked, _ = _coco_rle_checked(seg)
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
        _integer(ann["area"], f"{at}.area", minimum=0)
        _number(ann["predicted_iou"], f"{at}.predicted_iou")
        _number(ann["stability_score"], f"{at}.stability_score")
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
