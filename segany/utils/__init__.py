"""Compatibility namespace mirroring ``segment_anything.utils``."""
