"""Prefill by the automatic mask generator at strict thresholds (``--method auto``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .settings import AUTO_DEFAULTS

__all__ = ["auto_proposals", "make_auto_generator"]


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
