"""Any single-mask segmentation (mask, RLE of either kind, COCO polygons) as one COCO RLE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .polygons import polygons_to_rle
from .rle import (
    RLE,
    checked_coco_rle,
    encode_coco_rle,
    is_uncompressed_rle,
    uncompressed_to_coco_rle,
)

__all__ = ["as_coco_rle"]


def as_coco_rle(segmentation: Any, height: int | None = None, width: int | None = None) -> RLE:
    """Any single-mask segmentation as a validated COCO RLE with ``str`` counts.

    Accepts a ``(H, W)`` bool/integer mask, an uncompressed RLE, a COCO RLE (``str`` or
    ``bytes`` counts) or COCO polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixel-edge
    coordinates; needs ``height`` and ``width``). When ``height``/``width`` are given, the
    segmentation's size must match them.
    """
    if isinstance(segmentation, Mapping):
        if is_uncompressed_rle(segmentation):
            rle = uncompressed_to_coco_rle(segmentation)
        else:
            checked, _ = checked_coco_rle(segmentation)
            rle = {"size": checked["size"], "counts": checked["counts"].decode("ascii")}
    elif isinstance(segmentation, list) and (
        not segmentation or isinstance(segmentation[0], list | tuple | np.ndarray)
    ):
        if height is None or width is None:
            raise ValueError("polygon segmentations need the image height and width")
        rle = polygons_to_rle(segmentation, height, width)
    else:
        mask = np.asarray(segmentation)
        if mask.ndim != 2:
            raise ValueError(f"a mask segmentation must be a (H, W) array; got shape {mask.shape}")
        rle = encode_coco_rle(mask)
    if height is not None and width is not None and list(rle["size"]) != [height, width]:
        raise ValueError(
            f"segmentation size {list(rle['size'])} does not match the image"
            f" (height, width) = ({height}, {width})"
        )
    return rle
