"""Zero-shot object proposals (SAM paper section 7.3, appendix D.3).

The automatic mask generator, modified as the paper describes: a 64x64 point grid on the full
image (no crops), no predicted-IoU and no stability-score filter, box NMS at 0.9 instead of
0.7; the masks are ranked by the mean of their predicted IoU and stability score and the first
:data:`MAX_PROPOSALS` (1000) are kept, that mean being each proposal's score. The metric is
class-agnostic mask AR@1000 (:func:`segany.zeroshot.coco_eval.proposal_recall`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_PROPOSALS", "ProposalSettings", "make_generator", "propose", "rank_proposals"]

#: Proposals kept per image (AR@1000).
MAX_PROPOSALS = 1000


@dataclass(frozen=True)
class ProposalSettings:
    """The generator's settings for proposals (defaults: the paper's appendix D.3)."""

    points_per_side: int = 64
    box_nms_thresh: float = 0.9
    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0
    crop_n_layers: int = 0
    max_proposals: int = MAX_PROPOSALS
    points_per_batch: int | None = 64

    def __post_init__(self) -> None:
        if not isinstance(self.points_per_side, int) or self.points_per_side < 1:
            raise ValueError(
                f"points_per_side must be a positive integer, got {self.points_per_side!r}"
            )
        if not 0.0 < self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in (0, 1], got {self.box_nms_thresh}")
        if not isinstance(self.max_proposals, int) or self.max_proposals < 1:
            raise ValueError(
                f"max_proposals must be a positive integer, got {self.max_proposals!r}"
            )
        if self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (recorded in results.json)."""
        return asdict(self)


def make_generator(model: Any, settings: ProposalSettings | None = None) -> Any:
    """A :class:`segany.SamAutomaticMaskGenerator` on ``model`` (a ``Sam`` or an
    ``OnnxPredictor``) with the proposal settings; its output is COCO RLE."""
    from ..amg import SamAutomaticMaskGenerator

    s = settings or ProposalSettings()
    return SamAutomaticMaskGenerator(
        model,
        points_per_side=s.points_per_side,
        points_per_batch=s.points_per_batch,
        pred_iou_thresh=s.pred_iou_thresh,
        stability_score_thresh=s.stability_score_thresh,
        box_nms_thresh=s.box_nms_thresh,
        crop_n_layers=s.crop_n_layers,
        output_mode="coco_rle",
    )


def rank_proposals(
    records: Sequence[Mapping[str, Any]], max_proposals: int = MAX_PROPOSALS
) -> list[dict[str, Any]]:
    """The generator's records ranked by ``(predicted_iou + stability_score) / 2``, highest
    first (ties keep the generator's order), cut to ``max_proposals``; each gets that mean as
    ``score``. Empty masks (no stability score) are left out."""
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
    scores = np.array(
        [(float(r["predicted_iou"]) + float(r["stability_score"])) / 2.0 for r in records],
        dtype=np.float64,
    )
    # an empty mask has no stability score (0 / 0) and can match nothing: not a proposal
    valid = np.isfinite(scores) & np.array([int(r["area"]) > 0 for r in records], dtype=bool)
    order = [i for i in np.argsort(-np.where(valid, scores, -np.inf), kind="stable") if valid[i]]
    order = order[:max_proposals]
    return [{**records[i], "score": float(scores[i])} for i in order]


def propose(
    generator: Any, image: np.ndarray, image_id: int, settings: ProposalSettings
) -> list[dict[str, Any]]:
    """COCO results (``image_id``, ``category_id`` 1, ``segmentation`` COCO RLE, ``score``,
    ``bbox`` XYWH) of the top ``settings.max_proposals`` proposals for ``image`` ``(H, W, 3)``
    uint8 RGB."""
    ranked = rank_proposals(generator.generate(image), settings.max_proposals)
    return [
        {
            "image_id": int(image_id),
            "category_id": 1,
            "segmentation": {
                "size": list(r["segmentation"]["size"]),
                "counts": r["segmentation"]["counts"],
            },
            "score": r["score"],
            "bbox": [float(v) for v in r["bbox"]],
        }
        for r in ranked
    ]
