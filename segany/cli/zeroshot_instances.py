"""``segany zeroshot instances``."""

from __future__ import annotations

from typing import Any


def register(actions: Any) -> None:
    """Add the ``instances`` action to the subparsers ``actions`` (not built yet)."""
