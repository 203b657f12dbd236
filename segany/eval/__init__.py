"""Evaluation of promptable segmentation: the SAM paper's interactive point protocol
(:mod:`.interactive`)."""

from .interactive import (
    DEFAULT_CLICKS,
    InteractiveResult,
    evaluate_interactive,
    farthest_point,
    first_click,
    mask_iou,
    next_click,
)

__all__ = [
    "DEFAULT_CLICKS",
    "InteractiveResult",
    "evaluate_interactive",
    "farthest_point",
    "first_click",
    "mask_iou",
    "next_click",
]
