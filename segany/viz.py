"""Render masks and prompts on top of an image, and write mask / overlay PNGs atomically.

Conventions used throughout:

* images are ``(H, W, 3)`` uint8 RGB arrays;
* masks are ``(K, H, W)`` (or a single ``(H, W)``) boolean arrays, same ``H, W`` as the image;
* points are ``(N, 2)`` **(x, y)** pixel coordinates in the image (x along the width), the
  same frame :meth:`segany.SamPredictor.predict` takes; labels ``(N,)`` use SAM's convention
  (1 foreground, 0 background, 2/3 box corners, -1 ignored);
* boxes are ``(B, 4)`` **XYXY** (x0, y0, x1, y1) pixel coordinates.

Only numpy and Pillow are used.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .io.files import write_bytes_atomic

__all__ = [
    "BOX_COLOR",
    "PALETTE",
    "mask_boundary",
    "mask_color",
    "overlay_masks",
    "save_image_png",
    "save_mask_png",
    "write_bytes_atomic",
]

#: Fill colours (RGB) of masks 0, 1, 2, ... (cycled): well separated hues, none of them the
#: pure green / red used for foreground / background points or the box colour.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 144, 255),  # blue
    (255, 140, 0),  # orange
    (186, 85, 211),  # orchid
    (0, 206, 209),  # turquoise
    (220, 20, 60),  # crimson
    (50, 205, 50),  # lime green
    (255, 105, 180),  # pink
    (139, 69, 19),  # brown
    (72, 61, 139),  # slate blue
    (128, 128, 0),  # olive
)
#: Colour of box prompts (and of box-corner points, labels 2 and 3).
BOX_COLOR: tuple[int, int, int] = (255, 230, 0)
_FG_COLOR = (0, 200, 0)
_BG_COLOR = (230, 0, 0)
_EDGE_COLOR = (255, 255, 255)
_OUTLINE_SHADE = 0.55  # outline colour = fill colour * this


def mask_color(index: int) -> tuple[int, int, int]:
    """RGB fill colour of mask ``index`` (deterministic; the palette repeats after 10)."""
    return PALETTE[index % len(PALETTE)]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array; got shape {image.shape}, "
            f"dtype {image.dtype}"
        )
    return image


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with a 4-neighbour cross; pixels beyond the image count as unchanged
    (so a mask touching the image border is not outlined along the border)."""
    for _ in range(iterations):
        p = np.pad(mask, 1, mode="edge")
        mask = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask


def mask_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of a ``(H, W)`` bool mask: mask pixels within ``thickness`` pixels of a
    pixel outside the mask. Returns ``(H, W)`` bool."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~_erode(mask, thickness)


def _line_scale(h: int, w: int) -> tuple[int, int, int, int]:
    """(outline px, point radius px, point edge px, box line px) for an ``h x w`` image."""
    side = max(h, w)
    outline = 1 if min(h, w) < 600 else 2
    radius = max(3, round(side / 90))
    edge = max(1, round(radius / 4))
    box_width = max(2, round(side / 350))
    return outline, radius, edge, box_width


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    points: np.ndarray | Sequence[Sequence[float]] | None = None,
    labels: np.ndarray | Sequence[int] | None = None,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    alpha: float = 0.5,
    outline: bool = True,
) -> np.ndarray:
    """Draw masks (and optionally prompts) over an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(K, H, W)`` bool (any dtype: non-zero is "in"), or one ``(H, W)`` mask;
            ``K`` may be 0. Mask ``k`` is filled with :func:`mask_color` ``(k)``, blended as
            ``(1 - alpha) * pixel + alpha * colour``; later masks are blended over earlier ones.
        points: ``(N, 2)`` (x, y) pixel coordinates of point prompts, or None.
        labels: ``(N,)`` point labels (default: all 1). 1 = foreground, drawn as a green disc
            with a white edge; 0 = background, a red disc with a white edge; 2 / 3 (box
            corners) in the box colour; -1 (padding) is not drawn.
        boxes: ``(B, 4)`` (or one ``(4,)``) XYXY box prompts, drawn as rectangles in
            :data:`BOX_COLOR`, or None.
        alpha: fill opacity in ``[0, 1]``.
        outline: draw each mask's boundary (1 px, 2 px for images of at least 600 px on their
            short side) in a darker shade of its fill colour, fully opaque.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB array; ``image`` is not modified. Pixels outside every
        mask and away from the prompts keep their exact values. Point radius and line widths
        scale with the image size.

    Raises:
        ValueError: for inconsistent shapes or ``alpha`` outside ``[0, 1]``.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise ValueError(f"masks must have shape (K, {h}, {w}) to match the image; got {m.shape}")
    m = m.astype(bool, copy=False)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    thickness, radius, edge, box_width = _line_scale(h, w)

    out = image.astype(np.float32)
    for k in range(m.shape[0]):
        color = np.asarray(mask_color(k), np.float32)
        sel = m[k]
        out[sel] = (1.0 - alpha) * out[sel] + alpha * color
    if outline:
        for k in range(m.shape[0]):
            dark = np.asarray(mask_color(k), np.float32) * _OUTLINE_SHADE
            out[mask_boundary(m[k], thickness)] = dark
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    pts = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) as (x, y); got {np.shape(points)}")
        if pts.shape[0] == 0:
            pts = None
    box_arr = None
    if boxes is not None:
        box_arr = np.asarray(boxes, dtype=np.float64)
        if box_arr.ndim == 1:
            box_arr = box_arr[None]
        if box_arr.ndim != 2 or box_arr.shape[1] != 4:
            raise ValueError(f"boxes must have shape (B, 4) as XYXY; got {np.shape(boxes)}")
        if box_arr.shape[0] == 0:
            box_arr = None
    if pts is None and box_arr is None:
        return result

    pil = Image.fromarray(result)
    draw = ImageDraw.Draw(pil)
    if box_arr is not None:
        for x0, y0, x1, y1 in box_arr:
            draw.rectangle(
                [float(x0), float(y0), float(max(x0, x1)), float(max(y0, y1))],
                outline=BOX_COLOR,
                width=box_width,
            )
    if pts is not None:
        if labels is None:
            lab = np.ones(len(pts), dtype=np.int64)
        else:
            lab = np.asarray(labels).reshape(-1)
            if lab.shape != (len(pts),):
                raise ValueError(
                    f"labels must have shape ({len(pts)},) to match points; got {np.shape(labels)}"
                )
        for (x, y), label in zip(pts, lab, strict=True):
            label = int(label)
            if label == -1:
                continue
            fill = _FG_COLOR if label == 1 else _BG_COLOR if label == 0 else BOX_COLOR
            draw.ellipse(
                [float(x) - radius, float(y) - radius, float(x) + radius, float(y) + radius],
                fill=fill,
                outline=_EDGE_COLOR,
                width=edge,
            )
    return np.asarray(pil, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------- files


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a ``(H, W)`` mask (bool; non-zero is "in") as an 8-bit grayscale (mode ``L``) PNG
    with values 0 (out) and 255 (in), atomically (see :func:`segany.io.files.atomic_write`)."""
    m = np.asarray(mask)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"mask must be a non-empty (H, W) array; got shape {m.shape}")
    data = np.where(m.astype(bool, copy=False), np.uint8(255), np.uint8(0))
    write_bytes_atomic(path, _png_bytes(Image.fromarray(data)))


def save_image_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save an ``(H, W, 3)`` uint8 RGB array (e.g. from :func:`overlay_masks`) as a PNG,
    atomically (see :func:`segany.io.files.atomic_write`)."""
    image = _check_image(image)
    write_bytes_atomic(path, _png_bytes(Image.fromarray(np.ascontiguousarray(image))))
