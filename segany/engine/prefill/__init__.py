"""Data-engine stage 2: prefilled masks. ``prefill_project`` proposes confident masks for new
images (:mod:`.auto`: the automatic generator at strict thresholds; :mod:`.detector`: a
class-agnostic box detector trained on the project's accepted masks, whose boxes prompt SAM),
stored as ``source="prefill"`` proposals that annotators accept, edit or reject.

Needs the ``engine`` extra (and torch, torchvision for the detector).
"""

from .run import DETECTOR_MIN_IOU, IMAGE_CHOICES, METHODS, MIN_SCORE, PrefillReport, prefill_project

__all__ = [
    "DETECTOR_MIN_IOU",
    "IMAGE_CHOICES",
    "METHODS",
    "MIN_SCORE",
    "PrefillReport",
    "prefill_project",
]
