"""Mirror of ``segment_anything.utils.transforms`` (the implementation is
:mod:`segany.transforms`)."""

from ..transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
