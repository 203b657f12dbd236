"""Text and region embeddings for SAM's text prompts (paper section 7.5, appendix D.5).

* :mod:`.encoder`: :class:`TextEncoder`, the interface (phrases and mask regions into one
  l2-normalised embedding space);
* :mod:`.region`: the region crop (box expanded, squared, resampled) and masked pooling;
* :mod:`.small_clip`: :class:`SmallClip`, a small CLIP-style pair of our own, trainable on a CPU;
* :mod:`.load`: :func:`load_text_encoder`, either of them from one string;
* :mod:`.open_clip_backend`: :class:`OpenClipEncoder`, an ``open_clip`` model (the paper's
  ViT-L/14@336) from a local checkpoint, with the class token's last-layer attention kept inside
  the mask; needs the ``text`` extra. Imported lazily (open_clip only when one is built).
"""

from __future__ import annotations

from typing import Any

from .encoder import TextEncoder, validate_texts
from .load import load_text_encoder
from .region import (
    RegionCropConfig,
    crop_region,
    crop_regions,
    masked_pool,
    region_box,
)
from .small_clip import (
    RegionEncoder,
    SmallClip,
    SmallClipConfig,
    TextTower,
    Vocabulary,
    attribute_positives,
    caption_positives,
    contrastive_loss,
    load_small_clip,
    save_small_clip,
    train_small_clip,
)

__all__ = [
    "OpenClipEncoder",
    "RegionCropConfig",
    "RegionEncoder",
    "SmallClip",
    "SmallClipConfig",
    "TextEncoder",
    "TextTower",
    "Vocabulary",
    "attribute_positives",
    "caption_positives",
    "contrastive_loss",
    "crop_region",
    "crop_regions",
    "load_small_clip",
    "load_text_encoder",
    "masked_pool",
    "region_box",
    "save_small_clip",
    "train_small_clip",
    "validate_texts",
]


def __getattr__(name: str) -> Any:
    if name == "OpenClipEncoder":
        from .open_clip_backend import OpenClipEncoder

        return OpenClipEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
