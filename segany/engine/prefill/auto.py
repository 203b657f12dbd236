"""Prefill by the automatic mask generator at strict thresholds (``--method auto``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["AUTO_DEFAULTS", "auto_proposals", "make_auto_generator"]

#: The generator's settings for prefill (the one place they are written): a 32 x 32 grid and
#: strict thresholds, so that only masks an annotator would accept as they are are proposed.
#: ``--min-score`` replaces ``pred_iou_thresh``. Masks covering 95 % of the image or more are
#: dropped, as in SA-1B.
AUTO_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.95,
    "stability_score_thresh": 0.97,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "max_area_fraction": 0.95,
}


def make_auto_generator(model: Any, **knobs: Any) -> Any:
    """A :class:`segany.amg.SamAutomaticMaskGenerator` on ``model`` (a Sam) with
    :data:`AUTO_DEFAULTS` updated by ``knobs`` (any of the generator's keyword arguments),
    giving COCO RLE records. Raises ValueError for bad knob values."""
    from ...amg import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **{**AUTO_DEFAULTS, **knobs})


def auto_proposals(generator: Any, image: np.ndarray) -> list[dict[str, Any]]:
    """The generator's masks of ``image`` (``(H, W, 3)`` uint8 RGB) as proposals for
    :meth:`segany.engine.store.Project.add_prefill`: COCO RLE ``segmentation``, scores, the
    grid point that made each mask (``point_coords`` ``[[x, y]]`` pixels, also as the prompt
    ``{"points": [[x, y]], "labels": [1]}``) and the ``crop_box`` (XYWH; None for the whole
    image). Highest predicted IoU first."""
    h, w = image.shape[:2]
    out = []
    for r in sorted(generator.generate(image), key=lambda r: -float(r["predicted_iou"])):
        crop = [float(v) for v in r["crop_box"]]
        points = [[float(x), float(y)] for x, y in r["point_coords"]]
        out.append(
            {
                "segmentation": r["segmentation"],
                "predicted_iou": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
                "point_coords": points,
                "crop_box": None if crop == [0.0, 0.0, float(w), float(h)] else crop,
                "prompts": {"points": points, "labels": [1] * len(points)},
            }
        )
    return out
