"""Automatic-mask-generation utilities, mirroring ``segment_anything.utils.amg``.

Conventions: boxes are XYXY in pixels with *inclusive* integer extents as produced by
:func:`batched_mask_to_box` (a one-pixel mask at column 3, row 5 has box ``[3, 5, 3, 5]``);
crop boxes are XYXY with exclusive ends (``[x0, y0, x1, y1]`` covers columns ``x0..x1-1``);
point grids are (x, y) in [0, 1] over the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from copy import deepcopy
from itertools import product
from typing import Any

import numpy as np
import torch

from ..formats.rle import (
    decode_uncompressed_rle,
    encode_uncompressed_rle,
    rle_area,
    uncompressed_to_coco_rle,
)

__all__ = [
    "MaskData",
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle_pytorch",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]


class MaskData:
    """Columns of per-mask data (tensors, arrays or lists of equal length) filtered and
    concatenated together."""

    def __init__(self, **columns: Any) -> None:
        self._stats: dict[str, Any] = {}
        for k, v in columns.items():
            self[k] = v

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, (list, np.ndarray, torch.Tensor)):
            raise TypeError(f"MaskData column {key!r} must be a list, array or tensor")
        self._stats[key] = value

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def __len__(self) -> int:
        for v in self._stats.values():
            return len(v)
        return 0

    def items(self):
        return self._stats.items()

    def filter(self, keep: torch.Tensor | np.ndarray) -> None:
        """Keep rows selected by a boolean mask or an index array (in that order)."""
        keep_t = torch.as_tensor(keep)
        for k, v in self._stats.items():
            if isinstance(v, torch.Tensor):
                self._stats[k] = v[keep_t.to(v.device)]
            elif isinstance(v, np.ndarray):
                self._stats[k] = v[keep_t.cpu().numpy()]
            elif keep_t.dtype == torch.bool:
                self._stats[k] = [a for a, m in zip(v, keep_t.tolist(), strict=True) if m]
            else:
                self._stats[k] = [v[i] for i in keep_t.tolist()]

    def cat(self, other: MaskData) -> None:
        for k, v in other.items():
            if k not in self._stats:
                self._stats[k] = deepcopy(v) if isinstance(v, list) else v
            elif isinstance(v, torch.Tensor):
                self._stats[k] = torch.cat([self._stats[k], v.to(self._stats[k].device)])
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([self._stats[k], v])
            else:
                self._stats[k] = self._stats[k] + list(v)

    def to_numpy(self) -> None:
        for k, v in self._stats.items():
            if isinstance(v, torch.Tensor):
                self._stats[k] = v.detach().cpu().numpy()


def batch_iterator(batch_size: int, *args: Sequence) -> Iterator[list]:
    """Yield aligned slices of ``batch_size`` rows of each argument."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("batch_iterator needs arguments of equal length")
    for start in range(0, len(args[0]), batch_size):
        yield [a[start : start + batch_size] for a in args]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` (x, y) points at the centres of an n x n grid over [0, 1]^2, row-major."""
    offset = 1 / (2 * n_per_side)
    centres = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` per side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, exclusive ends) for the full image and ``n_layers`` layers of
    ``(2**i)**2`` overlapping crops; returns the boxes and their layer indices."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + im_w) / n)
        crop_h = math.ceil((overlap * (n - 1) + im_h) / n)
        xs = [int((crop_w - overlap) * i) for i in range(n)]
        ys = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def calculate_stability_score(
    masks: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU between the masks thresholded at ``t + offset`` and at ``t - offset``
    (``(..., H, W)`` logits -> ``(...)``). An empty loose mask gives NaN, as officially."""
    inter = (masks > (mask_threshold + threshold_offset)).sum((-1, -2), dtype=torch.int32)
    union = (masks > (mask_threshold - threshold_offset)).sum((-1, -2), dtype=torch.int32)
    return inter / union


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` bool -> ``(..., 4)`` int64 XYXY inclusive boxes; empty masks give zeros."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    return _box_from_projections(masks.any(dim=-1), masks.any(dim=-2))


def batched_logits_to_box(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``batched_mask_to_box(logits > threshold)`` without forming the masks: a row or column
    holds mask pixels exactly when its maximum logit exceeds the threshold (a float max
    reduction is several times faster than a bool one). ``(..., H, W)`` -> ``(..., 4)``."""
    if logits.numel() == 0:
        return torch.zeros(*logits.shape[:-2], 4, dtype=torch.int64, device=logits.device)
    return _box_from_projections(logits.amax(dim=-1) > threshold, logits.amax(dim=-2) > threshold)


def _box_from_projections(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """XYXY boxes from ``rows (..., H)`` / ``cols (..., W)``: whether each holds mask pixels."""
    h, w = rows.shape[-1], cols.shape[-1]
    ar_h = torch.arange(h, device=rows.device)
    ar_w = torch.arange(w, device=rows.device)
    top = torch.where(rows, ar_h, h).amin(-1)
    bottom = torch.where(rows, ar_h, -1).amax(-1)
    left = torch.where(cols, ar_w, w).amin(-1)
    right = torch.where(cols, ar_w, -1).amax(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes (crop frame) within ``atol`` px of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    """One XYXY box -> XYWH (new tensor)."""
    box = box_xyxy.clone() if isinstance(box_xyxy, torch.Tensor) else deepcopy(box_xyxy)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([x0, y0, x0, y0], device=boxes.device)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(
    masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int
) -> torch.Tensor:
    """Zero-pad ``(..., h, w)`` crop masks back into the ``(orig_h, orig_w)`` image."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """``(B, H, W)`` bool -> uncompressed RLEs ``{"size": [H, W], "counts": [...]}`` in
    column-major order, starting with the zeros run (see :mod:`segany.formats.rle`)."""
    if tensor.shape[0] == 0:
        return []
    return encode_uncompressed_rle(tensor.detach().cpu().numpy())


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> ``(H, W)`` bool."""
    return decode_uncompressed_rle(rle)


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixels of an RLE (uncompressed or COCO)."""
    return rle_area(rle)


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE with ``str`` counts (JSON-serialisable)."""
    return uncompressed_to_coco_rle(uncompressed_rle)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than
    ``area_thresh`` pixels (8-connectivity). Returns the mask and whether it changed."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    work = (mask ^ holes).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(work, 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n_labels) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(labels, fill), True
