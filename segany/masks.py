"""Measures on binary masks shared by evaluation, training and export: one implementation for
numpy arrays and torch tensors alike (it uses only operators both define; no import of either).
"""

from __future__ import annotations

from typing import Any

__all__ = ["mask_iou"]


def mask_iou(pred: Any, gt: Any) -> Any:
    """IoU of boolean masks ``pred (..., H, W)`` against ``gt`` (broadcast, e.g. ``(B, C, H, W)``
    against ``(B, 1, H, W)``), over the last two axes; two empty masks have IoU 1.

    Both are bool numpy arrays (the result is float64 of the broadcast leading shape, a numpy
    scalar for two ``(H, W)`` masks) or both bool torch tensors (the result is a float32 tensor
    on their device, without gradient).
    """
    inter = (pred & gt).sum(axis=(-2, -1))
    union = (pred | gt).sum(axis=(-2, -1))
    empty = union == 0
    return inter / (union + empty) + empty
