"""Masks <-> COCO polygons, for annotation tools (CVAT, Label Studio, LabelMe, COCO viewers).

Coordinate convention (COCO's, the one ``pycocotools.mask.frPyObjects`` rasterises): ``x``
along the width, ``y`` down the height, in pixels, with **integer coordinates on pixel
edges**: pixel ``(row r, col c)`` is the square ``[c, c + 1] x [r, r + 1]``. A mask that is
exactly the rectangle of rows ``r0..r1`` and columns ``c0..c1`` (inclusive) therefore has the
polygon ``[c0, r0, c1 + 1, r0, c1 + 1, r1 + 1, c0, r1 + 1]``.

A polygon is a flat list ``[x1, y1, x2, y2, ...]`` of Python floats with at least 3 vertices;
a mask becomes a list of them, one per connected part (8-connectivity, as in OpenCV).

**Holes are not represented**: only outer boundaries are traced, so rasterising the polygons
gives the mask with its holes filled (a part lying inside another part's hole is covered by
the outer polygon). Store masks with holes as RLE (:mod:`segany.formats.rle`).

Tracing uses OpenCV: ``cv2.findContours`` on the mask upsampled 2x, which makes the traced
pixel centres land exactly on the pixel-edge boundary, then ``cv2.approxPolyDP``. With
``tolerance=0`` the polygons are the exact pixel-edge boundary. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .rle import RLE, decode_coco_rle, encode_coco_rle

__all__ = ["mask_to_polygons", "polygons_to_mask", "polygons_to_rle"]


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance: float = 1.0,
    min_area: float = 0,
) -> list[list[float]]:
    """Outer boundaries of a mask's connected parts as COCO polygons.

    Args:
        mask: ``(H, W)`` bool/integer array (non-zero = inside).
        tolerance: simplification tolerance in pixels (Douglas-Peucker ``epsilon``): every
            vertex of the exact pixel-edge boundary is within ``tolerance`` of the returned
            polygon. ``0`` keeps the exact boundary (only collinear vertices dropped). A part
            that simplification would reduce to fewer than 3 vertices keeps its exact boundary.
        min_area: drop parts whose area (pixels, holes counted as filled) is below this.

    Returns:
        A list of flat ``[x1, y1, x2, y2, ...]`` float lists (pixel-edge coordinates, see the
        module docstring), largest part first (ties: top-most, then left-most), each starting
        at its top-most then left-most vertex and running clockwise on screen (positive
        shoelace area with y down). Empty for an empty mask.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"mask must be a non-empty (H, W) array; got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"mask must be bool or integer; got dtype {m.dtype}")
        m = m != 0
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0; got {tolerance!r}")
    if not (isinstance(min_area, int | float) and math.isfinite(min_area)):
        raise ValueError(f"min_area must be a finite number; got {min_area!r}")

    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(m.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    sub = m[r0 : rows[-1] + 1, c0 : cols[-1] + 1]  # trace only the bounding box

    parts: list[tuple[float, np.ndarray]] = []
    for loop in _outer_loops(sub):
        area = _signed_area(loop)
        if area <= 0 or area < min_area:
            continue
        if tolerance > 0:
            approx = cv2.approxPolyDP(loop.reshape(-1, 1, 2).astype(np.int32), tolerance, True)
            simplified = _normalize_loop(approx.reshape(-1, 2))
            if len(simplified) >= 3 and _signed_area(simplified) > 0:
                loop = simplified
        parts.append((area, loop + np.array([c0, r0])))
    parts.sort(key=lambda p: (-p[0], int(p[1][0, 1]), int(p[1][0, 0])))
    return [loop.astype(np.float64).ravel().tolist() for _, loop in parts]


def _signed_area(loop: np.ndarray) -> float:
    """Shoelace area of a closed (K, 2) vertex loop; positive when clockwise on screen."""
    x = loop[:, 0].astype(np.float64)
    y = loop[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _normalize_loop(loop: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear vertices, orient clockwise on screen, start at the top-most
    then left-most vertex."""
    loop = np.asarray(loop, dtype=np.int64).reshape(-1, 2)
    if len(loop) > 1:
        loop = loop[np.any(loop != np.roll(loop, 1, axis=0), axis=1)]
    if len(loop) >= 3:
        prev = loop - np.roll(loop, 1, axis=0)
        nxt = np.roll(loop, -1, axis=0) - loop
        cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
        if np.any(cross != 0):
            loop = loop[cross != 0]
    if len(loop) >= 3 and _signed_area(loop) < 0:
        loop = loop[::-1]
    if len(loop):
        loop = np.roll(loop, -int(np.lexsort((loop[:, 0], loop[:, 1]))[0]), axis=0)
    return loop


def _outer_loops(sub: np.ndarray) -> list[np.ndarray]:
    """Closed pixel-edge loops of the outer boundaries of ``sub``'s parts (8-connectivity)."""
    # On the 2x upsampled mask (padded by 1), the pixel-centre contour of the outer boundary
    # maps onto the exact pixel-edge boundary of the original with (x, y) -> (x // 2, y // 2).
    up = np.repeat(np.repeat(sub, 2, axis=0), 2, axis=1)
    up = np.pad(up, 1).astype(np.uint8)
    contours = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
    return [_normalize_loop(c.reshape(-1, 2) // 2) for c in contours]


def _check_polygons(polygons: Any) -> list[list[float]]:
    if isinstance(polygons, str | bytes) or not isinstance(polygons, Sequence):
        raise ValueError(
            f"polygons must be a list of flat [x1, y1, x2, y2, ...] lists; got {type(polygons).__name__}"
        )
    out = []
    for i, poly in enumerate(polygons):
        arr = np.asarray(poly, dtype=np.float64) if not isinstance(poly, str | bytes) else None
        if arr is None or arr.ndim != 1:
            raise ValueError(f"polygon {i} must be a flat [x1, y1, x2, y2, ...] list of numbers")
        if arr.size < 6 or arr.size % 2:
            raise ValueError(
                f"polygon {i} must have an even number (>= 6) of coordinates; got {arr.size}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"polygon {i} has non-finite coordinates")
        out.append(arr.tolist())
    return out


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterise COCO polygons (union of all parts) to one COCO RLE with ``str`` counts, via
    ``pycocotools.mask.frPyObjects`` and ``merge``. An empty list gives an empty mask."""
    if not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
        for v in (height, width)
    ):
        raise ValueError(f"height and width must be positive ints; got {height!r}, {width!r}")
    height, width = int(height), int(width)
    polys = _check_polygons(polygons)
    if not polys:
        return encode_coco_rle(np.zeros((height, width), dtype=bool))
    merged = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    return {"size": [height, width], "counts": merged["counts"].decode("ascii")}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (pixel-edge coordinates, union of all parts) to a
    ``(height, width)`` bool mask with pycocotools (``frPyObjects``, ``merge``, ``decode``)."""
    return decode_coco_rle(polygons_to_rle(polygons, height, width))
