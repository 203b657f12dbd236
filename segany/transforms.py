"""Pixel-level transforms between user images and the model frame.

Frames and conventions:

* **original frame** — the user's image, ``(H, W)`` pixels; coordinates are **(x, y)**, x along
  the width, with pixel (i, j)'s top-left corner at (x=j, y=i) (its centre at j+0.5, i+0.5).
* **input frame** — the image resized so that its longest side is ``img_size`` (1024), keeping
  the aspect ratio: ``(h, w) = get_preprocess_shape(H, W, img_size)``. Prompts are mapped here by
  scaling x by ``w / W`` and y by ``h / H``.
* **model frame** — the input frame zero-padded at the bottom/right to ``img_size x img_size``.

The numpy functions here need no torch (the ONNX Runtime predictor uses them where torch is not
installed); the ``*_torch`` functions import it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """Output ``(h, w)`` of resizing ``(oldh, oldw)`` so the longest side is ``long_side_length``
    (rounded half up, as the official implementation does)."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return int(oldh * scale + 0.5), int(oldw * scale + 0.5)


class ResizeLongestSide:
    """Resize images and map (x, y) coordinates / XYXY boxes to the input frame.

    Drop-in for ``segment_anything.utils.transforms.ResizeLongestSide``.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    get_preprocess_shape = staticmethod(get_preprocess_shape)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` -> ``(h, w, 3) uint8`` (bilinear with antialiasing, via Pillow)."""
        h, w = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(..., 2)`` (x, y) in the original frame -> float (x, y) in the input frame."""
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(B, 4)`` XYXY boxes in the original frame -> the input frame."""
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float -> ``(B, 3, h, w)`` (bilinear, antialiased)."""
        import torch.nn.functional as F

        h, w = get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_coords` (returns float)."""
        import torch

        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


def normalize_and_pad(
    x: torch.Tensor,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    img_size: int,
) -> torch.Tensor:
    """``(B, 3, h, w)`` 0..255 RGB -> normalized and zero-padded ``(B, 3, S, S)``."""
    import torch.nn.functional as F

    x = (x - pixel_mean.view(-1, 1, 1)) / pixel_std.view(-1, 1, 1)
    h, w = x.shape[-2:]
    return F.pad(x, (0, img_size - w, 0, img_size - h))


def postprocess_masks(
    masks: torch.Tensor,
    input_size: Sequence[int],
    original_size: Sequence[int],
    img_size: int,
) -> torch.Tensor:
    """Upscale low-res mask logits to the original frame.

    Computes exactly what the official implementation does — bilinear upsampling of the
    ``(L, L)`` logits to ``(S, S)``, cropping the ``input_size`` region, bilinear resizing to
    ``original_size`` — but upsamples only the low-res rows/columns that the crop depends on,
    and skips the second resize when it is the identity.

    Args:
        masks: ``(B, M, L, L)`` logits (L = 256 for the official models).
        input_size: ``(h, w)`` of the resized image in the input frame.
        original_size: ``(H, W)`` of the user's image.
        img_size: model input side S (1024).

    Returns:
        ``(B, M, H, W)`` logits (float32 if the input was lower precision).
    """
    import torch
    import torch.nn.functional as F

    if masks.dtype in (torch.bfloat16, torch.float16):
        masks = masks.float()
    low = masks.shape[-1]
    factor = img_size // low
    h, w = int(input_size[0]), int(input_size[1])
    if factor * low == img_size and masks.shape[-2] == low:
        # Output row o < h reads source rows floor((o + .5) / f - .5) and the next one.
        rows = min(low, -(-h // factor) + 1)
        cols = min(low, -(-w // factor) + 1)
        masks = F.interpolate(
            masks[..., :rows, :cols],
            (rows * factor, cols * factor),
            mode="bilinear",
            align_corners=False,
        )
    else:
        masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., :h, :w]
    if (h, w) != (int(original_size[0]), int(original_size[1])):
        masks = F.interpolate(
            masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False
        )
    return masks
