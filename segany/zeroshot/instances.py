"""Zero-shot instance segmentation from detector boxes (SAM paper section 7.4, appendix D.4).

Each detection's box (COCO results format: ``{image_id, category_id, bbox: XYWH, score}``)
prompts SAM; the most confident of the three masks (highest predicted IoU) is fed back as the
mask prompt together with the same box, once (the paper's one refinement pass), and the mask of
that second pass (single-mask output) is the instance. Every mask keeps its detection's
``category_id`` and ``score``. All boxes of an image are decoded in batches after one encoder
pass. The metric is COCO mask AP (:func:`segany.zeroshot.coco_eval.mask_ap`).

With the ground-truth boxes as "detections" (:func:`gt_detections`, as the paper's human
study) the IoU of each mask with its own ground-truth mask is also measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BOX_BATCH", "check_detections", "gt_detections", "segment_boxes"]

#: Boxes decoded together (bounds the memory: BOX_BATCH x 3 x H x W masks).
BOX_BATCH = 32


def check_detections(
    detections: Any, image_ids: set[int], category_ids: set[int]
) -> list[dict[str, Any]]:
    """Validate a COCO detections list and return it as plain dicts (bbox as floats).

    Raises:
        ValueError: not a list, or an entry without a known ``image_id`` / ``category_id``, a
        finite ``score`` or a ``bbox`` ``[x, y, w, h]`` with finite values and w, h > 0 (says
        which entry and what is allowed).
    """
    if not isinstance(detections, list):
        raise ValueError("detections must be a JSON list of {image_id, category_id, bbox, score}")
    out = []
    for i, d in enumerate(detections):
        if not isinstance(d, Mapping):
            raise ValueError(
                f"detections[{i}] must be an object {{image_id, category_id, bbox, score}}"
            )
        if d.get("image_id") not in image_ids:
            raise ValueError(
                f"detections[{i}]: image_id {d.get('image_id')!r} is not in the annotations"
            )
        if d.get("category_id") not in category_ids:
            raise ValueError(
                f"detections[{i}]: category_id {d.get('category_id')!r} is not in the annotations"
            )
        box = d.get("bbox")
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            or box[2] <= 0
            or box[3] <= 0
        ):
            raise ValueError(
                f"detections[{i}]: bbox must be [x, y, w, h] with w, h > 0, got {box!r}"
            )
        score = d.get("score")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"detections[{i}]: score must be a finite number, got {score!r}")
        out.append(
            {
                "image_id": int(d["image_id"]),
                "category_id": int(d["category_id"]),
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
        )
    return out


def gt_detections(coco: Any, image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The ground-truth boxes of ``image_ids`` as detections with score 1 (crowd regions and
    boxes without area left out); each carries ``ann_id``, its annotation's id."""
    out = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=list(image_ids))):
        x, y, w, h = (float(v) for v in ann["bbox"])
        if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        out.append(
            {
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": [x, y, w, h],
                "score": 1.0,
                "ann_id": int(ann["id"]),
            }
        )
    return out


def _predict(
    predictor: Any, boxes: np.ndarray, mask_input: np.ndarray | None, multimask: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``predictor.predict`` for B boxes, always with the leading B axis (a single box comes
    back without it)."""
    masks, scores, low = predictor.predict(
        box=boxes, mask_input=mask_input, multimask_output=multimask
    )
    if scores.ndim == 1:
        masks, scores, low = masks[None], scores[None], low[None]
    return masks, scores, low


def segment_boxes(
    predictor: Any,
    image: np.ndarray,
    detections: Sequence[Mapping[str, Any]],
    *,
    refine: bool = True,
    batch: int = BOX_BATCH,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Masks for the ``detections`` of one image ``(H, W, 3)`` uint8 RGB.

    ``predictor`` is a :class:`segany.SamPredictor` (the image is set here, once). Boxes are
    XYWH pixels of the image (x along the width), clipped to it. Without ``refine`` the first
    pass's most confident mask is the result (to measure what the refinement adds).

    Returns:
        the COCO results (each detection's fields plus ``segmentation``, a COCO RLE, and
        ``predicted_iou``), and the masks as ``(H, W)`` bool arrays in the same order.
    """
    from ..formats.rle import encode_coco_rle

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = image.shape[:2]
    predictor.set_image(image)
    results: list[dict[str, Any]] = []
    masks_out: list[np.ndarray] = []
    for start in range(0, len(detections), batch):
        chunk = detections[start : start + batch]
        boxes = np.array(
            [
                [
                    d["bbox"][0],
                    d["bbox"][1],
                    d["bbox"][0] + d["bbox"][2],
                    d["bbox"][1] + d["bbox"][3],
                ]
                for d in chunk
            ],
            dtype=np.float64,
        )
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        masks, scores, low = _predict(predictor, boxes, None, True)
        best = scores.argmax(axis=1)
        rows = np.arange(len(chunk))
        if refine:
            masks, scores, _ = _predict(predictor, boxes, low[rows, best][:, None], False)
            final, iou = masks[:, 0], scores[:, 0]
        else:
            final, iou = masks[rows, best], scores[rows, best]
        rles = encode_coco_rle(np.ascontiguousarray(final))
        for d, rle, m, s in zip(chunk, rles, final, iou, strict=True):
            results.append({**d, "segmentation": rle, "predicted_iou": float(s)})
            masks_out.append(m)
    return results, masks_out
