"""Frozen architecture configs, one per SAM variant.

A :class:`SamConfig` fully determines the module tree built by :func:`segany.build.build_sam_model`
and therefore the names and shapes in its state dict, which are identical to the official
``segment-anything`` checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageEncoderConfig:
    """ViT image encoder (ViTDet-style) hyper-parameters.

    ``img_size`` is the square side (pixels) the encoder consumes; the embedding grid is
    ``img_size // patch_size`` on each side. Blocks whose index is in ``global_attn_indexes``
    attend over the whole grid, the others within ``window_size``-sided windows.
    """

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class PromptEncoderConfig:
    """Prompt encoder: ``mask_in_chans`` channels in the mask-downscaling CNN;
    ``text_embed_dim`` the width of text/region embeddings of the optional text path (None:
    none, as in the official models)."""

    mask_in_chans: int = 16
    text_embed_dim: int | None = None

    def __post_init__(self) -> None:
        t = self.text_embed_dim
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
            raise ValueError(f"text_embed_dim must be a positive int or None; got {t!r}")


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way-transformer mask decoder hyper-parameters."""

    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    """Whole-model config. ``prompt_embed_dim`` is the channel width shared by the encoder neck,
    the prompt encoder and the mask decoder. Pixel statistics are for 0..255 RGB input."""

    name: str
    image_encoder: ImageEncoderConfig
    prompt_embed_dim: int = 256
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0
    image_format: str = "RGB"


VIT_B = SamConfig(
    name="vit_b",
    image_encoder=ImageEncoderConfig(
        embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)
    ),
)
VIT_L = SamConfig(
    name="vit_l",
    image_encoder=ImageEncoderConfig(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
)
VIT_H = SamConfig(
    name="vit_h",
    image_encoder=ImageEncoderConfig(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
)

# segany's own small model (the bundled default): a 6-block ViT at 256 px with 8 px patches
# (a 32x32 embedding grid, 128x128 low-res masks) and the standard prompt encoder and decoder.
SEGANY_TINY = SamConfig(
    name="segany_tiny",
    image_encoder=ImageEncoderConfig(
        img_size=256,
        patch_size=8,
        embed_dim=192,
        depth=6,
        num_heads=3,
        window_size=8,
        global_attn_indexes=(2, 5),
    ),
)

# Official variants (weights downloadable from the official release).
VARIANTS: dict[str, SamConfig] = {"vit_b": VIT_B, "vit_l": VIT_L, "vit_h": VIT_H}
# Every named architecture, including ones segany trains itself.
ARCHITECTURES: dict[str, SamConfig] = {**VARIANTS, "segany_tiny": SEGANY_TINY}


def get_config(variant: str) -> SamConfig:
    """Return the config of a named architecture (``vit_b``, ``vit_l``, ``vit_h``,
    ``segany_tiny``)."""
    try:
        return ARCHITECTURES[variant]
    except KeyError:
        raise ValueError(
            f"unknown SAM architecture {variant!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
