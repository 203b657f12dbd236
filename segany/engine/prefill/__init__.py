"""Data-engine stage 2: prefilled masks. :func:`prefill_project` proposes confident masks for
new images (:mod:`.auto`: the automatic generator at strict thresholds; :mod:`.detector`: a
class-agnostic box detector trained on the project's accepted masks, whose boxes prompt SAM),
stored as ``source="prefill"`` proposals that annotators accept, edit or reject. The settings
are in :mod:`.settings`.

Needs the ``engine`` extra (and torchvision for the detector). Importing this package loads
neither: ``prefill_project`` and ``PrefillReport`` are imported on first use.
"""

from typing import Any

from .settings import (
    ARCHS,
    AUTO_DEFAULTS,
    DETECTOR_MIN_IOU,
    IMAGE_CHOICES,
    METHODS,
    MIN_SCORE,
)

__all__ = [
    "ARCHS",
    "AUTO_DEFAULTS",
    "DETECTOR_MIN_IOU",
    "IMAGE_CHOICES",
    "METHODS",
    "MIN_SCORE",
    "PrefillReport",
    "prefill_project",
]


def __getattr__(name: str) -> Any:
    if name in ("prefill_project", "PrefillReport"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
