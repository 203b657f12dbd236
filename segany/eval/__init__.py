"""Evaluation of promptable segmentation: the SAM paper's interactive point protocol
(:mod:`.interactive`)."""

from . import interactive
from .interactive import *  # noqa: F403

__all__ = interactive.__all__
