"""An ``open_clip`` model as a :class:`~segany.text.encoder.TextEncoder` (needs the ``text``
extra: ``pip install segany[text]``).

The default is the paper's CLIP, ``ViT-L-14-336`` (768-dimensional embeddings, 336 x 336
input). Weights come only from a local checkpoint file (``pretrained=path``, any file
``open_clip.load_checkpoint`` reads); nothing is ever downloaded, and ``pretrained=None`` leaves
the weights random (for tests).

Texts use open_clip's own tokenizer for the model (its BPE vocabulary ships inside the wheel, so
this works offline). Regions use :func:`~segany.text.region.crop_region` at the model's input
size, normalised with the model's preprocessing mean and std, then the CLIP image encoder.

The paper lets the image encoder's region token attend only inside the mask. open_clip's ViT
has no hook for that without changing its modules, so here the region's pixels outside the mask
are zeroed instead: the default crop config sets ``zero_outside_inference=True`` (training still
zeroes with probability ``zero_outside_probability``). The crop is resampled bilinearly (area
when shrinking), not with open_clip's bicubic resize.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

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
    * ``crop``: the region crop; its ``size`` must be the model's input size. Default
      ``RegionCropConfig(size=input size, zero_outside_inference=True)``.

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
        if crop is None:
            crop = RegionCropConfig(size=self.image_size, zero_outside_inference=True)
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
        return self.model.encode_image(x, normalize=True)
