"""Prompt simulation for interactive training (Segment Anything, appendix A).

Coordinates are ``(x, y)`` pixels of the model's input frame (the resized, unpadded image sits
in the top-left corner of the ``S x S`` padded frame); a point at pixel column ``c``, row ``r``
is ``(c, r)`` — the prompt encoder adds the half-pixel offset to reach the pixel centre, as for
user clicks. Label 1 = foreground, 0 = background, -1 = "no point" (padding), as in SAM.
All sampling uses an explicit ``torch.Generator`` so a training step is reproducible.
"""

from __future__ import annotations

import torch

from ..utils.amg import batched_mask_to_box


def _sample_pixels(
    region: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel uniformly from each ``(N, H, W)`` bool region. Returns ``(N, 2)`` (x, y) float
    and ``(N,)`` bool "region was non-empty"; empty regions give (0, 0)."""
    n, h, w = region.shape
    flat = region.reshape(n, -1).float()
    nonempty = flat.sum(1) > 0
    weights = torch.where(nonempty[:, None], flat, torch.ones_like(flat))
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    xy = torch.stack([idx % w, idx // w], dim=1).float()
    return torch.where(nonempty[:, None], xy, torch.zeros_like(xy)), nonempty


def sample_points_in_masks(
    masks: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First prompt: a foreground point uniformly inside each mask.

    Args:
        masks: ``(N, H, W)`` bool ground truth (input frame).

    Returns:
        points ``(N, 1, 2)`` float (x, y) and labels ``(N, 1)`` int64 (1, or -1 for an empty
        mask).
    """
    xy, ok = _sample_pixels(masks.bool(), generator)
    labels = torch.where(ok, 1, -1).to(torch.int64)
    return xy[:, None], labels[:, None]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes ``(N, 4)`` float of ``(N, H, W)`` masks, in pixel-index coordinates
    (x0, y0 of the first and x1, y1 of the last foreground column/row). Empty → zeros.
    (:func:`segany.utils.amg.batched_mask_to_box` as float.)"""
    return batched_mask_to_box(masks.bool()).float()


def noisy_boxes(
    masks: torch.Tensor,
    *,
    noise: float = 0.1,
    max_noise_px: float = 20.0,
    frame: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """First prompt as a box: each mask's bounding box with Gaussian noise on every coordinate,
    standard deviation ``noise`` × the box side (width for x, height for y) capped at
    ``max_noise_px``; clipped to ``frame`` ``(h, w)`` (default the mask size). ``(N, 4)`` XYXY."""
    boxes = masks_to_boxes(masks)
    h, w = frame or masks.shape[-2:]
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1) + 1.0
    std = (side * noise).clamp(max=max_noise_px)
    eps = torch.randn(boxes.shape, generator=generator, device=boxes.device)
    b = boxes + eps * std
    b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
    x0, x1 = torch.minimum(b[:, 0], b[:, 2]), torch.maximum(b[:, 0], b[:, 2])
    y0, y1 = torch.minimum(b[:, 1], b[:, 3]), torch.maximum(b[:, 1], b[:, 3])
    return torch.stack([x0, y0, x1, y1], 1)


def rescale_coords(xy: torch.Tensor, scale: float) -> torch.Tensor:
    """Map ``(..., 2k)`` pixel coordinates — ``(x, y)`` points or XYXY boxes — of one frame onto
    a frame ``scale`` times larger, pixel centre to pixel centre: ``x' = (x + 0.5) * scale -
    0.5`` (used by progressive resizing: prompts drawn on a small training input, embedded in
    the model's frame)."""
    return (xy + 0.5) * scale - 0.5


def sample_error_points(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrective click: uniformly from the error region of the previous prediction.

    A false-negative pixel becomes a foreground point (label 1), a false-positive pixel a
    background point (label 0). Where the prediction is already perfect the point is a
    "no point" (label -1), which the prompt encoder embeds as padding.

    Args:
        pred: ``(N, H, W)`` bool previous binary prediction (input frame).
        target: ``(N, H, W)`` bool ground truth.
        valid: optional ``(N, H, W)`` bool region where clicks may land (the unpadded image).

    Returns:
        points ``(N, 1, 2)`` float (x, y) and labels ``(N, 1)`` int64.
    """
    pred, target = pred.bool(), target.bool()
    err = pred ^ target
    if valid is not None:
        err = err & valid.bool()
    xy, ok = _sample_pixels(err, generator)
    n = xy.shape[0]
    hit = target[torch.arange(n, device=xy.device), xy[:, 1].long(), xy[:, 0].long()]
    labels = torch.where(ok, hit.long(), torch.full_like(hit.long(), -1))
    return xy[:, None], labels[:, None]


def _randperm(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.randperm(n)`` drawn on ``generator``'s device (a CUDA generator cannot draw a
    CPU tensor); the CPU stream is unchanged."""
    dev = None if generator is None else generator.device
    return torch.randperm(n, generator=generator, device=dev)


def no_point_rounds(
    num_rounds: int, num_point_rounds: int, generator: torch.Generator | None = None
) -> set[int]:
    """Indices (1-based rounds after the first prompt) of the rounds that add no new point.

    SAM: of ``num_rounds`` = 1 + 8 + 2, after the first prompt come 8 rounds with a sampled
    point and 2 with only the previous mask fed back — one inserted at a random position among
    the 8, the other always last. Returns the set of round indices in ``1..num_rounds-1``.
    """
    extra = num_rounds - 1 - num_point_rounds
    if extra < 0:
        raise ValueError(
            f"num_rounds ({num_rounds}) must be at least 1 + num_point_rounds ({num_point_rounds})"
        )
    if extra == 0:
        return set()
    last = num_rounds - 1
    if extra == 1:
        return {last}
    # 'extra - 1' rounds at random positions among rounds 1..last-1, one at the end.
    perm = _randperm(last - 1, generator)[: extra - 1] + 1
    return {int(i) for i in perm} | {last}


def gradient_rounds(
    num_rounds: int, num_graded: int, generator: torch.Generator | None = None
) -> set[int]:
    """Indices (0-based) of the rounds that carry gradients and loss in one step.

    ``num_graded`` 0, or at least ``num_rounds``, means every round (the paper); otherwise round 0
    (the first prompt) and ``num_graded - 1`` of the later rounds drawn uniformly without
    replacement. Nothing is drawn from ``generator`` when every round is graded, so the default
    leaves the random stream of a step unchanged.
    """
    if num_graded < 0:
        raise ValueError(f"num_graded must be >= 0, got {num_graded}")
    if num_graded == 0 or num_graded >= num_rounds:
        return set(range(num_rounds))
    later = _randperm(num_rounds - 1, generator)[: num_graded - 1] + 1
    return {0} | {int(i) for i in later}
