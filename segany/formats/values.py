"""Values of the annotation files (SA-1B, COCO): numpy/torch scalars and arrays made plain
Python for JSON, and numbers checked with errors that name the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["integer", "number", "plain"]


def plain(value: Any) -> Any:
    """``value`` with numpy (or torch) scalars/arrays turned into Python ints/floats/lists."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors (no torch import needed)
        return plain(value.tolist())
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise ValueError(f"cannot store a {type(value).__name__} in JSON: {value!r}")


def number(value: Any, what: str) -> float:
    """``value`` as a finite float; ValueError naming ``what`` otherwise."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return float(value)


def integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (an integral float is accepted), at least ``minimum`` if given;
    ValueError naming ``what`` otherwise."""
    value = plain(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}; got {value}")
    return value
