"""Automatic mask generation ("segment everything")."""

from .generator import SamAutomaticMaskGenerator

__all__ = ["SamAutomaticMaskGenerator"]
