"""The stage-2 settings, in one place (no imports, so that the CLI reads them cheaply)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ARCHS",
    "AUTO_DEFAULTS",
    "DETECTOR_MIN_IOU",
    "IMAGE_CHOICES",
    "METHODS",
    "MIN_SCORE",
]

#: The prefill methods.
METHODS = ("detector", "auto")
#: Which images are prefilled: those with status ``new``, or every image (both skip the
#: images prefilled before).
IMAGE_CHOICES = ("new", "all")
#: ``--min-score`` defaults: for ``auto`` the least predicted IoU of a mask (the generator's
#: ``pred_iou_thresh``), for ``detector`` the least detector score of a box.
MIN_SCORE = {"auto": 0.95, "detector": 0.5}
#: ``detector``: the least SAM predicted IoU of a box's mask for it to be proposed.
DETECTOR_MIN_IOU = 0.88
#: The automatic generator's settings for ``auto``: a 32 x 32 grid and strict thresholds, so
#: that only masks an annotator would accept as they are are proposed (``--min-score``
#: replaces ``pred_iou_thresh``). Masks covering 95 % of the image or more are dropped, as in
#: SA-1B.
AUTO_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.95,
    "stability_score_thresh": 0.97,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "max_area_fraction": 0.95,
}
#: Detector architectures: ``mobilenet_v3`` (torchvision's
#: ``fasterrcnn_mobilenet_v3_large_320_fpn``, images resized to 320 px) and ``tiny`` (a
#: 4-layer CNN backbone, one feature map, 256 px: a fraction of a second per step on a CPU).
ARCHS = ("mobilenet_v3", "tiny")
