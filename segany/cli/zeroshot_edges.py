"""``segany zeroshot edges``: edge maps from a 16x16 point grid, scored as BSDS500 does."""

from __future__ import annotations

from typing import Any


def register(actions: Any) -> None:
    """Add the ``edges`` action to the subparsers ``actions`` (not built yet)."""
