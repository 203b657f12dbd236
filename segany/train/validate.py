"""Validation during training: the interactive point protocol of ``segany eval`` on held-out
data, sharded over the ``torchrun`` processes and summed, so every process count gives the same
numbers (see :class:`~segany.train.config.TrainConfig`, ``val_*`` fields)."""

from __future__ import annotations

from typing import Any

import torch

from ..eval import evaluate_interactive
from ..modeling import Sam
from ..predictor import SamPredictor
from .config import TrainConfig

VAL_LOG_NAME = "val.jsonl"
BEST_MODEL_NAME = "model_best.safetensors"


def validation_sums(
    sam: Sam, dataset: Any, config: TrainConfig, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """This process's share of a validation pass: images ``rank, rank + world_size, ...`` of
    the first ``config.val_images``. Returns float64 ``(2 * C + 1,)``: summed top-scored IoU
    after each of the ``C = len(config.val_clicks)`` click counts, then summed oracle IoU, then
    the number of masks. The model is put in eval mode and back; no gradient is recorded."""
    clicks = tuple(config.val_clicks)
    n = min(len(dataset), config.val_images)
    mine = range(rank, n, world_size)
    sums = torch.zeros(2 * len(clicks) + 1, dtype=torch.float64)
    if len(mine) == 0:
        return sums
    was_training = sam.training
    sam.eval()
    try:
        with torch.no_grad():
            result = evaluate_interactive(
                SamPredictor(sam),
                dataset,
                clicks=clicks,
                max_masks_per_image=config.val_masks_per_image,
                max_images=n,
                image_indices=mine,
                progress=False,
            )
    finally:
        sam.train(was_training)
    cols = [k - 1 for k in clicks]
    sums[: len(clicks)] = torch.from_numpy(result.iou_top[:, cols].sum(axis=0))
    sums[len(clicks) : -1] = torch.from_numpy(result.iou_oracle[:, cols].sum(axis=0))
    sums[-1] = len(result.iou_top)
    return sums


def validation_record(sums: torch.Tensor, config: TrainConfig) -> dict[str, Any]:
    """mIoU per click count from the (all-reduced) :func:`validation_sums`, and ``score``, the
    mean top-scored mIoU over ``config.val_clicks``."""
    clicks = list(config.val_clicks)
    count = max(float(sums[-1]), 1.0)
    top = [round(float(x) / count, 4) for x in sums[: len(clicks)]]
    oracle = [round(float(x) / count, 4) for x in sums[len(clicks) : -1]]
    return {
        "clicks": clicks,
        "top": top,
        "oracle": oracle,
        "masks": int(sums[-1]),
        "score": round(sum(top) / len(top), 4),
    }
