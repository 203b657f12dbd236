"""SAM's training losses (Segment Anything, appendix A).

Masks are supervised with a linear combination of focal and dice loss (20:1), the IoU head with
the mean squared error between its prediction and the IoU of the predicted mask with the ground
truth. With several output masks only the lowest-loss one is back-propagated.

All functions take logits ``(N, M, H, W)`` (N prompts, M output masks), targets ``(N, 1, H, W)``
in {0, 1} (broadcast over M) and an optional ``valid`` weight ``(N, 1, H, W)`` (1 inside the
image, 0 on padding). Per-mask losses are averaged over valid pixels (focal) or computed over
them (dice), giving ``(N, M)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import masks


def _valid(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(target) if valid is None else valid.to(target.dtype)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per mask, mean over valid pixels: ``(N, M)``.

    ``alpha`` weights positives (``1 - alpha`` negatives); ``alpha < 0`` disables the weighting.
    """
    logits = logits.float()
    target = target.float().expand_as(logits)
    w = _valid(target, valid).expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return (loss * w).flatten(2).sum(-1) / w.flatten(2).sum(-1).clamp(min=1)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft dice loss ``1 - (2|P∩T| + s) / (|P| + |T| + s)`` per mask on sigmoid probabilities:
    ``(N, M)``."""
    p = torch.sigmoid(logits.float())
    target = target.float().expand_as(p)
    w = _valid(target, valid).expand_as(p)
    p = p * w
    inter = (p * target).flatten(2).sum(-1)
    total = p.flatten(2).sum(-1) + (target * w).flatten(2).sum(-1)
    return 1 - (2 * inter + smooth) / (total + smooth)


def mask_iou(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """IoU of the binarized prediction (``logits > 0``, restricted to ``valid`` pixels) with the
    target per mask: ``(N, M)`` float32 (:func:`segany.masks.mask_iou`). An empty prediction
    of an empty target counts as IoU 1. No gradient."""
    with torch.no_grad():
        pred = logits > 0
        if valid is not None:
            pred = pred & valid.bool()
        return masks.mask_iou(pred, target.bool())


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """SAM's loss for one round of prompts.

    Args:
        logits: ``(N, M, H, W)`` mask logits at the target's resolution (M = 1 or 3).
        iou_pred: ``(N, M)`` IoU-head predictions.
        target: ``(N, 1, H, W)`` ground-truth masks in {0, 1}.
        valid: optional ``(N, 1, H, W)`` weights (0 on padding).

    Returns a dict: ``loss`` (scalar to back-propagate: mean over prompts of the selected
    mask's ``focal_weight * focal + dice_weight * dice`` plus ``iou_weight`` times the IoU MSE
    over all M outputs), ``focal``, ``dice``, ``iou_mse`` (scalars, for logging), ``selected``
    ``(N,)`` index of the lowest-loss output per prompt, ``iou`` ``(N,)`` true IoU of the
    selected output and ``true_iou`` ``(N, M)`` true IoU of every output (no gradient).
    """
    focal = sigmoid_focal_loss(logits, target, valid, alpha=focal_alpha, gamma=focal_gamma)
    dice = dice_loss(logits, target, valid)
    per_mask = focal_weight * focal + dice_weight * dice  # (N, M)
    selected = per_mask.detach().argmin(dim=1)  # min-loss output: only it is back-propagated
    rows = torch.arange(per_mask.shape[0], device=per_mask.device)
    true_iou = mask_iou(logits, target, valid)
    iou_mse = F.mse_loss(iou_pred.float(), true_iou, reduction="none").mean(dim=1)
    loss = per_mask[rows, selected] + iou_weight * iou_mse
    return {
        "loss": loss.mean(),
        "focal": focal[rows, selected].mean().detach(),
        "dice": dice[rows, selected].mean().detach(),
        "iou_mse": iou_mse.mean().detach(),
        "selected": selected,
        "iou": true_iou[rows, selected],
        "true_iou": true_iou,
    }
