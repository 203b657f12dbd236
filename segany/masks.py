"""Measures on binary masks shared by evaluation, training and export: one implementation for
numpy arrays and torch tensors alike (it uses only operators both define; no import of either).
"""

from __future__ import annotations

from typing import Any

__all__ = ["mask_iou", "match_mask_sets"]


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


def match_mask_sets(pred: Any, truth: Any, iou_target: float = 0.5) -> dict[str, Any]:
    """A mask set ``pred (N, H, W)`` (e.g. automatic masks) against a reference set ``truth
    (K, H, W)`` of the same image, both numpy, taken as bool (empty reference masks are ignored):
    ``{"true", "covered_50", "covered_target"}`` (reference masks whose best IoU with a ``pred``
    mask is >= 0.5, >= ``iou_target``), ``{"auto", "precise"}`` (``pred`` masks whose best IoU
    with a reference mask is >= 0.5) and ``matched_ious`` (the best IoU of each reference mask
    covered at 0.5)."""
    import numpy as np

    truth = np.asarray(truth, bool)
    truth = truth[truth.any(axis=(1, 2))] if len(truth) else truth
    pred = np.asarray(pred, bool)
    if len(pred) and len(truth):
        ious = np.asarray(mask_iou(pred[:, None], truth[None]), float)  # (N, K)
    else:
        ious = np.zeros((len(pred), len(truth)))
    best_true = ious.max(axis=0) if len(pred) else np.zeros(len(truth))
    best_pred = ious.max(axis=1) if len(truth) else np.zeros(len(pred))
    return {
        "true": len(truth),
        "covered_50": int((best_true >= 0.5).sum()),
        "covered_target": int((best_true >= iou_target).sum()),
        "auto": len(pred),
        "precise": int((best_pred >= 0.5).sum()),
        "matched_ious": [float(v) for v in best_true[best_true >= 0.5]],
    }
