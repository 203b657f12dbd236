"""The region crop of the SAM paper's text-prompt experiment (section 7.5, appendix D.5), and the
masked average pooling that stands in for "the region token attends only inside the mask".

A mask's region is its tight bounding box, expanded about its centre by a scale factor (drawn
uniformly from ``train_scale`` in training, ``inference_scale`` at inference) and then squared,
so that the crop keeps the object's aspect ratio. The box is resampled to ``size x size``;
pixels of the box outside the image are 0, and pixels outside the mask are optionally zeroed
too (with probability ``zero_outside_probability`` in training).

Coordinates: boxes are ``(x0, y0, x1, y1)`` in continuous pixel XY coordinates, x along the
width, where pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``. The tight box of a
mask whose pixels span columns ``c0..c1`` and rows ``r0..r1`` (inclusive) is therefore
``(c0, r0, c1 + 1, r1 + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RegionCropConfig",
    "crop_region",
    "crop_regions",
    "masked_pool",
    "region_box",
    "validate_image",
    "validate_masks",
]


@dataclass(frozen=True, kw_only=True)
class RegionCropConfig:
    """How a mask's region is cropped for a region encoder.

    * ``size``: side of the square crop in pixels.
    * ``train_scale``: ``(low, high)``; in training the box scale is drawn uniformly from
      ``[low, high)`` (1.0 is the tight box).
    * ``inference_scale``: the fixed box scale at inference.
    * ``zero_outside_probability``: in training, the probability that pixels outside the mask
      are zeroed.
    * ``zero_outside_inference``: whether pixels outside the mask are zeroed at inference.
    """

    size: int
    train_scale: tuple[float, float] = (1.0, 2.0)
    inference_scale: float = 1.5
    zero_outside_probability: float = 0.5
    zero_outside_inference: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        object.__setattr__(self, "train_scale", tuple(float(s) for s in self.train_scale))
        if len(self.train_scale) != 2:
            raise ValueError(f"train_scale must be (low, high), got {self.train_scale!r}")
        low, high = self.train_scale
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"train_scale must be finite with 0 < low <= high, got {(low, high)}")
        if not (math.isfinite(self.inference_scale) and self.inference_scale > 0):
            raise ValueError(f"inference_scale must be > 0, got {self.inference_scale!r}")
        if not 0.0 <= self.zero_outside_probability <= 1.0:
            raise ValueError(
                f"zero_outside_probability must be in [0, 1], got {self.zero_outside_probability!r}"
            )

    def draw(
        self, *, train: bool, generator: np.random.Generator | None = None
    ) -> tuple[float, bool]:
        """The ``(scale, zero_outside)`` of one crop.

        At inference these are ``(inference_scale, zero_outside_inference)`` and ``generator``
        is unused. In training ``generator`` is required: the scale is
        ``generator.uniform(low, high)`` and then ``zero_outside`` is
        ``generator.random() < zero_outside_probability``, in that order.
        """
        if not train:
            return float(self.inference_scale), bool(self.zero_outside_inference)
        if not isinstance(generator, np.random.Generator):
            raise ValueError(
                "train=True needs a numpy Generator (np.random.default_rng(seed)) to draw the "
                f"crop scale from, got {type(generator).__name__}"
            )
        low, high = self.train_scale
        scale = float(generator.uniform(low, high))
        zero_outside = bool(generator.random() < self.zero_outside_probability)
        return scale, zero_outside


def validate_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is an ``(H, W, 3)`` uint8 numpy array (RGB)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")


def validate_masks(masks: np.ndarray, hw: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless ``masks`` is a ``(K, H, W)`` bool numpy array with ``K >= 1`` and
    no empty mask (and ``(H, W) == hw`` when given)."""
    if not isinstance(masks, np.ndarray):
        raise ValueError(f"masks must be a numpy array, got {type(masks).__name__}")
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must have shape (K, H, W) with K >= 1, got {masks.shape}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be bool, got {masks.dtype}")
    if hw is not None and masks.shape[1:] != tuple(hw):
        raise ValueError(f"masks must be (K, H, W) with (H, W) = {tuple(hw)}, got {masks.shape}")
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if len(empty):
        raise ValueError(f"masks must be non-empty; empty masks at indices {empty.tolist()}")


def _validate_mask(mask: np.ndarray) -> None:
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if not mask.any():
        raise ValueError("mask is empty: a region needs at least one pixel")


def _validate_scale(scale: float) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return scale


def region_box(mask: np.ndarray, scale: float) -> tuple[float, float, float, float]:
    """The square region box ``(x0, y0, x1, y1)`` of ``mask (H, W) bool`` (non-empty).

    The mask's tight box (pixel edges, see the module docstring) is scaled about its centre by
    ``scale`` (1.0 keeps it tight), then squared to side ``max(width, height)`` about the same
    centre. Floats in pixel XY coordinates; the box may extend past the image.
    """
    _validate_mask(mask)
    scale = _validate_scale(scale)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1 = float(cols[0]), float(cols[-1] + 1)
    y0, y1 = float(rows[0]), float(rows[-1] + 1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * scale / 2
    return (cx - half, cy - half, cx + half, cy + half)


def _resample(array: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The square ``box`` of ``array (H, W[, 3]) uint8`` resampled to ``(size, size[, 3])``.

    Upsampling (box side <= size) is bilinear, straight from the source. Downsampling first
    takes the box at about one pixel per source pixel (``ceil(side)`` pixels, bilinear) and then
    area-averages that to ``size`` (``cv2.INTER_AREA``), so that small crops do not alias. Both
    sample output pixel centres: output pixel ``u`` covers ``[x0 + u*s, x0 + (u+1)*s)`` with
    ``s = side / size``. Outside the image the value is 0.
    """
    x0, y0, x1, _ = box
    side = x1 - x0
    n = size if side <= size else math.ceil(side - 1e-9)
    step = side / n
    # Inverse map: source pixel-centre coordinate of output pixel u is x0 + (u + 0.5)*step - 0.5.
    matrix = np.array(
        [[step, 0.0, x0 + 0.5 * step - 0.5], [0.0, step, y0 + 0.5 * step - 0.5]], np.float64
    )
    out = cv2.warpAffine(
        np.ascontiguousarray(array),
        matrix,
        (n, n),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if n != size:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out


def crop_region(
    image: np.ndarray, mask: np.ndarray, *, size: int, scale: float, zero_outside: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The mask's square region (:func:`region_box` with ``scale``) resampled to ``size x size``.

    ``image`` is ``(H, W, 3)`` uint8 RGB, ``mask`` ``(H, W)`` bool and non-empty. Returns
    ``(crop (size, size, 3) uint8, crop_mask (size, size) bool)``: pixels of the box outside the
    image are 0 in both; ``crop_mask`` is the mask resampled the same way (as 0/255) and
    thresholded at half, or at any coverage where half would leave it empty (a thin mask, a
    one-pixel line, shrunk to less than half a crop pixel everywhere). With ``zero_outside`` the crop's pixels outside ``crop_mask`` are 0.
    See :func:`_resample` for the sampling.
    """
    validate_image(image)
    _validate_mask(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} must equal the image's (H, W) {image.shape[:2]}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    box = region_box(mask, scale)
    crop = _resample(image, box, size)
    coverage = _resample(mask.astype(np.uint8) * 255, box, size)
    crop_mask = coverage >= 128
    if not crop_mask.any():  # a thin mask shrunk below half a pixel everywhere
        crop_mask = coverage > 0
    if zero_outside:
        crop = np.where(crop_mask[..., None], crop, 0).astype(np.uint8)
    return crop, crop_mask


def crop_regions(
    image: np.ndarray,
    masks: np.ndarray,
    config: RegionCropConfig,
    *,
    train: bool = False,
    generator: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The crops of ``masks (K, H, W) bool`` in ``image (H, W, 3) uint8`` under ``config``.

    Returns ``(crops (K, S, S, 3) uint8, crop_masks (K, S, S) bool)`` with ``S = config.size``.
    In training each mask draws its ``(scale, zero_outside)`` from ``generator`` in turn
    (:meth:`RegionCropConfig.draw`), so ``K`` masks at once draw exactly what ``K`` one-mask
    calls with the same generator draw.
    """
    validate_image(image)
    validate_masks(masks, image.shape[:2])
    crops, crop_masks = [], []
    for mask in masks:
        scale, zero_outside = config.draw(train=train, generator=generator)
        crop, crop_mask = crop_region(
            image, mask, size=config.size, scale=scale, zero_outside=zero_outside
        )
        crops.append(crop)
        crop_masks.append(crop_mask)
    return np.stack(crops), np.stack(crop_masks)


def masked_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of ``features (B, C, h, w)`` inside ``masks (B, H, W) bool``: ``(B, C)``.

    Each mask is resized to the ``(h, w)`` feature grid by area (``F.interpolate(mode="area")``:
    each cell's weight is the fraction of its pixels inside the mask), and the features are
    averaged with those weights. Where a resized mask has no weight (an empty mask) the result
    is the global mean of the features. The output has the features' dtype and device.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    if masks.ndim != 3 or masks.shape[0] != features.shape[0]:
        raise ValueError(
            f"masks must be (B, H, W) with B = {features.shape[0]}, got {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor, got {masks.dtype}")
    h, w = features.shape[-2:]
    weights = F.interpolate(masks[:, None].to(features.dtype), size=(h, w), mode="area")[:, 0]
    total = weights.sum(dim=(1, 2))  # (B,)
    empty = total <= 0
    weights = torch.where(empty[:, None, None], torch.ones_like(weights), weights)
    total = torch.where(empty, torch.full_like(total, h * w), total)
    return torch.einsum("bchw,bhw->bc", features, weights) / total[:, None]
