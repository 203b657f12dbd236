"""Turning whatever users hold (arrays of many dtypes, PIL images, files) into ``(H, W, 3)``
uint8 RGB, with clear errors for what cannot be an image."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

IMAGE_FORMATS = ("RGB", "BGR")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image)
    if image.mode in ("RGB", "L"):
        return np.asarray(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0:
            raise ValueError(
                f"float image has negative values (min {lo:g}); expected 0..1 or 0..255"
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        if hi * scale > 255.0 + 1e-3:
            raise ValueError(f"float image values up to {hi:g}; expected 0..1 or 0..255")
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise ValueError(f"integer image has negative values (min {lo})")
        if a.dtype == np.uint16 or hi > 255:
            if hi > 65535:
                raise ValueError(f"integer image values up to {hi}; expected 8- or 16-bit data")
            return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return a.astype(np.uint8)
    raise ValueError(f"unsupported image dtype {a.dtype}")


def to_rgb_uint8(image: Any, image_format: str = "RGB") -> np.ndarray:
    """Convert an image to a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    Accepts numpy arrays ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha is
    dropped) of dtype uint8, uint16 (16-bit, scaled), other integers in 0..255 or 0..65535,
    bool, or float (0..1 or 0..255), and PIL images of any mode. ``image_format`` tells the
    channel order of a 3/4-channel array: ``"RGB"`` or ``"BGR"`` (OpenCV).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if isinstance(image, Image.Image):
        a = _pil_to_array(image)
        image_format = "RGB"
    elif isinstance(image, np.ndarray):
        a = image
    else:
        raise ValueError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {a.shape}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image is empty (shape {a.shape})")
    a = _to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    else:
        a = a[:, :, :3]
        if image_format == "BGR":
            a = a[:, :, ::-1]
    return np.ascontiguousarray(a)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (any format Pillow reads, EXIF orientation applied) as RGB uint8."""
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return to_rgb_uint8(im)
