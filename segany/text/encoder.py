"""The text encoder interface: one embedding space for phrases and for mask regions.

The SAM paper (section 7.5, appendix D.5) trains SAM with the CLIP *image* embedding of each
mask's region as an extra prompt, and at inference feeds the CLIP *text* embedding of a phrase
in its place. A :class:`TextEncoder` gives both, as l2-normalised float32 rows on the CPU:

* :meth:`TextEncoder.encode_text`: phrases -> ``(N, D)``;
* :meth:`TextEncoder.encode_region` / :meth:`TextEncoder.encode_regions`: an RGB image and one or
  ``K`` masks -> ``(D,)`` / ``(K, D)``.

The base class validates the inputs, crops the regions (:mod:`.region`, with the encoder's
:class:`~segany.text.region.RegionCropConfig`) and normalises the outputs; a backend implements
:meth:`TextEncoder._encode_texts` and :meth:`TextEncoder._encode_crops`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .region import RegionCropConfig, crop_regions, validate_image

__all__ = ["TextEncoder", "validate_texts"]


def validate_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, or ValueError unless it is a non-empty sequence of non-blank str."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of str, not one str (wrap it in a list)")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a sequence of str, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("texts must be a non-empty sequence of str")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty; every text needs at least one word")
    return texts


class TextEncoder(abc.ABC):
    """Embeds phrases and mask regions into one ``embed_dim``-dimensional space.

    Subclasses set :attr:`embed_dim` and :attr:`crop` and implement :meth:`_encode_texts` and
    :meth:`_encode_crops`. Every public method returns float32 CPU tensors with l2-normalised
    rows, computed without gradient.
    """

    #: Dimension ``D`` of the embeddings.
    embed_dim: int
    #: How regions are cropped before :meth:`_encode_crops`.
    crop: RegionCropConfig

    @abc.abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` embeddings (any float dtype and device, not necessarily normalised) of
        validated ``texts``."""

    @abc.abstractmethod
    def _encode_crops(self, crops: np.ndarray, crop_masks: np.ndarray) -> torch.Tensor:
        """``(K, D)`` embeddings of ``crops (K, S, S, 3) uint8`` with ``crop_masks (K, S, S)
        bool``, ``S = crop.size``."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``texts`` (a non-empty sequence of non-blank str): ``(N, D)`` float32 on
        the CPU, rows l2-normalised."""
        texts = validate_texts(texts)
        with torch.no_grad():
            out = self._encode_texts(texts)
        return _finish(out, (len(texts), self.embed_dim))

    def encode_region(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        train: bool = False,
        generator: np.random.Generator | None = None,
    ) -> torch.Tensor:
        """Embedding of the region of ``mask (H, W) bool`` (non-empty) in ``image (H, W, 3)
        uint8`` RGB: ``(D,)`` float32 on the CPU, l2-normalised.

        At inference (``train=False``) the crop is fixed by :attr:`crop`; with ``train=True``
        its scale and zeroing are drawn from ``generator`` (required), see
        :meth:`RegionCropConfig.draw`.
        """
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            shape = getattr(mask, "shape", None)
            raise ValueError(f"mask must be an (H, W) bool numpy array, got shape {shape}")
        return self.encode_regions(image, mask[None], train=train, generator=generator)[0]

    def encode_regions(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        *,
        train: bool = False,
        generator: np.random.Generator | None = None,
    ) -> torch.Tensor:
        """Embeddings of the regions of ``masks (K, H, W) bool`` (each non-empty) in ``image
        (H, W, 3) uint8`` RGB: ``(K, D)`` float32 on the CPU, rows l2-normalised. Equal to ``K``
        calls of :meth:`encode_region` (in training: with the same generator, in mask order)."""
        validate_image(image)
        crops, crop_masks = crop_regions(image, masks, self.crop, train=train, generator=generator)
        with torch.no_grad():
            out = self._encode_crops(crops, crop_masks)
        return _finish(out, (len(crops), self.embed_dim))


def _finish(out: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(out.shape) != shape:
        raise RuntimeError(f"backend returned embeddings of shape {tuple(out.shape)}, not {shape}")
    return F.normalize(out.detach().to("cpu", torch.float32), dim=-1)
