"""An ``open_clip`` model as a :class:`~segany.text.encoder.TextEncoder` (needs the ``text``
extra: ``pip install segany[text]``).

The default is the paper's CLIP, ``ViT-L-14-336`` (768-dimensional embeddings, 336 x 336
input). Weights come only from a local checkpoint file (``pretrained=path``, any file
``open_clip.load_checkpoint`` reads); nothing is ever downloaded, and ``pretrained=None`` leaves
the weights random (for tests).

Texts use open_clip's own tokenizer for the model (its BPE vocabulary ships inside the wheel, so
this works offline). Regions use :func:`~segany.text.region.crop_region` at the model's input
size, normalised with the model's preprocessing mean and std, then the CLIP image encoder. The
crop is resampled bilinearly (area when shrinking), not with open_clip's bicubic resize.

The region's embedding should describe the mask, not its surroundings: the region token should
attend only inside the mask. With ``masked_attention=True`` (the default) that is done for
open_clip's plain ``VisionTransformer`` with class-token pooling (the ViT-L/14 family): the
layers run one by one, and in the last one the class token's attention to the patch tokens is
restricted to the patches that hold part of the crop mask (earlier layers are unmasked). Other vision towers need
``masked_attention=False``: then the region's pixels outside the mask are zeroed instead (the
default crop config sets ``zero_outside_inference=True`` in that case; training zeroes with
probability ``zero_outside_probability`` either way).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .encoder import TextEncoder
from .region import RegionCropConfig

__all__ = ["DEFAULT_MODEL", "OpenClipEncoder"]

#: The CLIP model of the paper (section 7.5).
DEFAULT_MODEL = "ViT-L-14-336"


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(
            "OpenClipEncoder needs open_clip: pip install 'segany[text]' (open_clip_torch==3.3.0)"
        ) from e
    return open_clip


class OpenClipEncoder(TextEncoder):
    """An ``open_clip`` CLIP model embedding phrases and mask regions.

    * ``model_name``: an open_clip built-in architecture name (``open_clip.list_models()``).
    * ``pretrained``: path of a local checkpoint file for that architecture, or None for random
      weights. Never a download tag.
    * ``model_overrides``: entries that replace the architecture's config (``embed_dim``,
      ``vision_cfg``, ``text_cfg``, ...; each replaces the whole entry), e.g. a tiny model for
      tests.
    * ``device``: where the model runs; embeddings are returned on the CPU.
    * ``masked_attention``: restrict the class token's last-layer attention to the mask's
      patches (see the module docstring); ValueError where the vision tower does not allow it.
    * ``crop``: the region crop; its ``size`` must be the model's input size. Default
      ``RegionCropConfig(size=input size, zero_outside_inference=not masked_attention)``.

    Attributes: ``model`` (the open_clip model, in eval mode), ``tokenizer``, ``embed_dim``,
    ``image_size``, ``mean`` and ``std`` (RGB, of pixel values in [0, 1]).
    """

    def __init__(
        self,
        *,
        model_name: str = DEFAULT_MODEL,
        pretrained: str | os.PathLike | None = None,
        model_overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        masked_attention: bool = True,
        crop: RegionCropConfig | None = None,
    ) -> None:
        open_clip = _import_open_clip()
        if not isinstance(model_name, str) or model_name not in open_clip.list_models():
            raise ValueError(
                f"model_name must be an open_clip built-in architecture, got {model_name!r}; "
                f"known: {', '.join(open_clip.list_models())}"
            )
        if pretrained is not None:
            pretrained = os.fspath(pretrained)
            if not os.path.isfile(pretrained):
                raise ValueError(
                    f"pretrained must be a local checkpoint file (nothing is downloaded); "
                    f"no file at {pretrained}"
                )
        overrides = dict(model_overrides or {})
        config = {**open_clip.get_model_config(model_name), **overrides}
        self.model = open_clip.create_model(
            model_name, pretrained=pretrained, device=device, **overrides
        ).eval()
        self.device = torch.device(device)
        self.embed_dim = int(config["embed_dim"])
        self.tokenizer = open_clip.get_tokenizer(
            model_name, context_length=config["text_cfg"].get("context_length")
        )
        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        size = preprocess["size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height != width:
            raise ValueError(f"{model_name} has a non-square input {height} x {width}")
        self.image_size = int(height)
        self.mean = tuple(float(v) for v in preprocess["mean"])
        self.std = tuple(float(v) for v in preprocess["std"])
        visual = self.model.visual
        if masked_attention and not (
            isinstance(visual, open_clip.transformer.VisionTransformer)
            and getattr(visual, "attn_pool", None) is None
            and visual.pool_type == "tok"
        ):
            raise ValueError(
                f"{model_name}'s vision tower ({type(visual).__name__}) has no class-token "
                "attention to mask; use masked_attention=False (pixels outside the mask zeroed)"
            )
        self.masked_attention = bool(masked_attention)
        if crop is None:
            crop = RegionCropConfig(
                size=self.image_size, zero_outside_inference=not masked_attention
            )
        elif crop.size != self.image_size:
            raise ValueError(f"crop.size {crop.size} must equal the model's input size {height}")
        self.crop = crop

    def _dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=True)

    def _encode_crops(self, crops: np.ndarray, crop_masks: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(self.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.std, device=self.device)[:, None, None]
        x = ((x - mean) / std).to(self._dtype())
        if not self.masked_attention:
            return self.model.encode_image(x, normalize=True)
        masks = torch.from_numpy(np.ascontiguousarray(crop_masks)).to(self.device)
        return self._encode_masked(x, masks)

    def patch_mask(self, crop_masks: torch.Tensor) -> torch.Tensor:
        """``(K, g*g)`` bool: the patches (row-major, as the ViT's tokens) holding part of each
        of ``crop_masks (K, S, S) bool``; a mask that holds no patch keeps them all."""
        grid = self.model.visual.grid_size
        cover = F.interpolate(crop_masks[:, None].float(), size=grid, mode="area")
        inside = cover.flatten(1) > 0
        return inside | ~inside.any(dim=1, keepdim=True)

    def _encode_masked(self, x: torch.Tensor, crop_masks: torch.Tensor) -> torch.Tensor:
        """The image encoder with the class token's last-layer attention inside the mask."""
        visual = self.model.visual
        transformer = visual.transformer
        inside = self.patch_mask(crop_masks)  # (K, g*g)
        k = inside.shape[0]
        tokens = inside.shape[1] + 1
        heads = transformer.resblocks[-1].attn.num_heads
        attn_mask = torch.zeros(k, tokens, tokens, device=x.device, dtype=x.dtype)
        attn_mask[:, 0, 1:] = torch.where(inside, 0.0, float("-inf")).to(x.dtype)
        attn_mask = attn_mask.repeat_interleave(heads, dim=0)  # (K * heads, L, L)
        h = visual._embeds(x)
        if not transformer.batch_first:
            h = h.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            h = block(h)
        h = transformer.resblocks[-1](h, attn_mask=attn_mask)
        if not transformer.batch_first:
            h = h.transpose(0, 1)
        pooled, _ = visual._pool(h)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled, dim=-1)
