"""Input checks of the project store's public methods; each failure is an InvalidInput that
names the field and says what is allowed."""

from __future__ import annotations

import json
import math
from typing import Any

from ...formats.rle import (
    coco_to_uncompressed_rle,
    rle_area,
    rle_to_bbox,
    uncompressed_to_coco_rle,
)
from ...formats.segmentation import as_coco_rle
from .errors import InvalidInput
from .models import IMAGE_STATUSES, MASK_SOURCES, STAGES

__all__ = [
    "EVENT_KINDS",
    "canonical_rle",
    "check_choice",
    "check_elapsed",
    "check_json",
    "check_label",
    "check_name",
    "check_points",
    "check_score",
    "check_box",
]

#: Allowed event kinds.
EVENT_KINDS = (
    "prompt",  # a click or box sent to the model
    "accept",  # a mask accepted (stored)
    "edit",  # a stored mask changed
    "delete",  # a stored mask removed
    "undo",
    "redo",
    "discard",  # a candidate mask thrown away (Escape)
    "status",  # an image's status changed
    "open",  # an annotator opened an image
)


def canonical_rle(segmentation: Any, height: int, width: int) -> tuple[dict[str, Any], int, list]:
    """``segmentation`` (COCO RLE, uncompressed RLE, ``(H, W)`` mask or COCO polygons) as the
    canonical COCO RLE of an ``(height, width)`` image, with its area and XYWH bbox. Refuses
    malformed RLEs, another size and empty masks."""
    try:
        rle = as_coco_rle(segmentation, height, width)
        rle = uncompressed_to_coco_rle(coco_to_uncompressed_rle(rle))  # canonical counts
    except (ValueError, TypeError) as e:
        raise InvalidInput(
            f"segmentation: {e}; give a COCO RLE {{'size': [{height}, {width}], 'counts': str}}"
        ) from None
    area = rle_area(rle)
    if area == 0:
        raise InvalidInput("segmentation is empty; a mask needs at least one pixel")
    return rle, area, rle_to_bbox(rle)


def check_choice(value: Any, allowed: tuple, what: str) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise InvalidInput(f"{what} must be one of {list(allowed)}; got {value!r}")
    return value


def check_status(value: Any) -> str:
    return check_choice(value, IMAGE_STATUSES, "status")


def check_source(value: Any) -> str:
    return check_choice(value, MASK_SOURCES, "source")


def check_stage(value: Any) -> int:
    return check_choice(value, STAGES, "stage")


def check_score(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number or null; got {value!r}")
    return float(value)


def check_points(value: Any, what: str = "point_coords") -> list[list[float]] | None:
    if value is None:
        return None
    ok = isinstance(value, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in value
    )
    if not ok:
        raise InvalidInput(f"{what} must be a list of [x, y] pairs (pixels); got {value!r}")
    return [[check_score(x, what), check_score(y, what)] for x, y in value]


def check_box(value: Any, what: str = "crop_box") -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise InvalidInput(f"{what} must be [x, y, w, h] (4 numbers, pixels); got {value!r}")
    return [check_score(v, what) for v in value]


def check_json(value: Any, what: str) -> Any:
    """``value`` if it is plain JSON (no NaN/inf), else InvalidInput."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be plain JSON (no NaN or infinity): {e}") from None


def check_label(value: Any) -> str | None:
    """A label is any string (stored verbatim) up to 1000 characters, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"label must be a string or null; got {type(value).__name__}")
    if len(value) > 1000 or "\x00" in value:
        raise InvalidInput("label must be at most 1000 characters, without NUL")
    return value


def check_name(value: Any, what: str = "annotator name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string; got {value!r}")
    if len(value) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{what} must be at most 200 characters, without control characters")
    return value


def check_elapsed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        value = round(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"elapsed_ms must be an integer >= 0 (milliseconds); got {value!r}")
    return value
