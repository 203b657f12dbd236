"""Overlays of the best and worst images of a run, for a person to look at.

An image's score is its **coverage**: the mean, over its ground-truth masks, of the best mask
IoU any of its results reaches (pycocotools ``maskUtils.iou`` on the RLEs; crowd regions left
out). The ``count`` best and worst images are drawn with their results' masks (at most
``max_masks`` of them, highest score first) as ``OUT/overlays/best_1_<file>.png``, ...,
``worst_1_<file>.png``, ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["coverage", "write_overlays"]


def coverage(gt: Any, image_id: int, results: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean over the image's (non-crowd) ground-truth masks of the best IoU with any of
    ``results`` (COCO results with RLE); None when the image has no ground truth."""
    from pycocotools import mask as mask_utils

    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
    if not anns:
        return None
    if not results:
        return 0.0
    truth = [gt.annToRLE(a) for a in anns]
    dets = [
        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]} for r in results
    ]
    ious = np.asarray(mask_utils.iou(dets, truth, [0] * len(truth)), dtype=np.float64)
    return float(ious.reshape(len(dets), len(truth)).max(axis=0).mean())


def write_overlays(
    out: str | os.PathLike,
    gt: Any,
    entries: Sequence[Mapping[str, Any]],
    per_image: Mapping[int, Sequence[Mapping[str, Any]]],
    *,
    count: int = 2,
    max_masks: int = 30,
) -> list[dict[str, Any]]:
    """Write the overlays (see the module doc) into ``out/overlays`` and return
    ``[{"kind": "best" | "worst", "image_id", "file_name", "coverage", "file"}]``."""
    from ..formats.rle import decode_coco_rle
    from ..io.image import load_image
    from ..viz import overlay_masks, save_image_png

    scored = []
    for e in entries:
        c = coverage(gt, e["id"], per_image.get(e["id"], []))
        if c is not None:
            scored.append((c, e))
    if not scored:
        return []
    scored.sort(key=lambda t: (-t[0], t[1]["id"]))
    picks = [("best", i, s) for i, s in enumerate(scored[:count])]
    worst = scored[::-1][:count]
    picks += [("worst", i, s) for i, s in enumerate(worst) if s not in scored[:count]]
    folder = Path(out) / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, rank, (c, e) in picks:
        results = sorted(per_image.get(e["id"], []), key=lambda r: -float(r["score"]))[:max_masks]
        image = load_image(e["path"])
        masks = (
            decode_coco_rle([r["segmentation"] for r in results])
            if results
            else np.zeros((0, *image.shape[:2]), bool)
        )
        stem = Path(e["file_name"]).stem
        path = folder / f"{kind}_{rank + 1}_{stem}.png"
        save_image_png(path, overlay_masks(image, masks))
        written.append(
            {
                "kind": kind,
                "image_id": e["id"],
                "file_name": e["file_name"],
                "coverage": c,
                "file": str(path.relative_to(out)),
            }
        )
    return written
