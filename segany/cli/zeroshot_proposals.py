"""``segany zeroshot proposals``."""

from __future__ import annotations

from typing import Any


def register(actions: Any) -> None:
    """Add the ``proposals`` action to the subparsers ``actions`` (not built yet)."""
