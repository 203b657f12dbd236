"""Input/output formats: images in, embeddings to and from files."""

from .embedding import load_embedding_file, save_embedding_file
from .image import load_image, to_rgb_uint8

__all__ = ["load_embedding_file", "load_image", "save_embedding_file", "to_rgb_uint8"]
