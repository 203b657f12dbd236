"""Text prompts for training (the paper's App. D.5): a frozen text encoder gives every training
mask an embedding — of its region crop (``text_source = "region"``: no captions needed, and at
inference the encoder's text embedding of a phrase stands in) or of its caption
(``"caption"``: captioned procedural scenes only, the upper bound to compare with)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import SampleLike

#: With ``text_source = "caption"``, the probability of naming an attribute the caption does
#: not need (see :func:`segany.data.captions.caption_objects`).
CAPTION_OVERSPECIFY = 0.3


class TextPrompts:
    """Per-mask text embeddings of a training batch (a
    :class:`~segany.train.data.TextPromptSource`).

    Args:
        encoder: a :class:`segany.text.TextEncoder` (used frozen, without gradients).
        source: ``"region"`` or ``"caption"`` (see the module docstring).
    """

    def __init__(self, encoder: Any, source: str = "region") -> None:
        if source not in ("region", "caption"):
            raise ValueError(f"text source must be 'region' or 'caption', got {source!r}")
        self.encoder = encoder
        self.source = source
        self._texts: dict[str, torch.Tensor] = {}

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @torch.no_grad()
    def embeddings(
        self,
        dataset: Any,
        index: int,
        sample: SampleLike,
        keep: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k, D)`` float32 embeddings and a ``(k,)`` bool of which masks have one, for the
        masks ``keep`` of item ``index`` of ``dataset`` (``sample`` is that item)."""
        k, d = len(keep), self.embed_dim
        emb = torch.zeros(k, d)
        has = torch.zeros(k, dtype=torch.bool)
        if k == 0:
            return emb, has
        if self.source == "region":
            masks = np.asarray(sample.masks, dtype=bool)[keep]
            out = self.encoder.encode_regions(
                np.asarray(sample.image), masks, train=True, generator=rng
            )
            return out.float().cpu(), torch.ones(k, dtype=torch.bool)
        captions = caption_texts(dataset, index, rng)
        rows = [(r, captions[int(m)]) for r, m in enumerate(keep) if int(m) in captions]
        missing = sorted({t for _, t in rows if t not in self._texts})
        if missing:
            for t, e in zip(missing, self.encoder.encode_text(missing), strict=True):
                self._texts[t] = e.float().cpu()
        for r, t in rows:
            emb[r] = self._texts[t]
            has[r] = True
        return emb, has


def load_training_text_encoder(config: Any) -> Any:
    """The frozen text encoder named by ``config.text_encoder`` (eval mode, no gradients)."""
    from ..text import load_text_encoder

    encoder = load_text_encoder(config.text_encoder)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval().requires_grad_(False)
    return encoder


def caption_texts(dataset: Any, index: int, rng: np.random.Generator) -> dict[int, str]:
    """Mask index → caption of item ``index`` of ``dataset`` (a training
    :class:`~segany.train.data.ConcatSamples` or a single dataset); empty unless the item is a
    scene of a captioned procedural dataset (``procedural-text:N`` or ``palette``)."""
    from ..data.captions import caption_objects

    part, j = dataset.locate(index) if hasattr(dataset, "locate") else (dataset, index)
    if not is_captioned(part):
        return {}
    caps = caption_objects(part.scene(j), rng, overspecify=CAPTION_OVERSPECIFY)
    return {c.index: c.text for c in caps}


def is_captioned(dataset: Any) -> bool:
    """Whether ``dataset`` is a procedural set with named colours (so it can be captioned)."""
    scenes = getattr(dataset, "scenes", None)
    return callable(getattr(dataset, "scene", None)) and bool(
        getattr(getattr(scenes, "config", None), "palette", False)
    )
