"""Shared fixtures: random-weight model pairs (official package vs segany) with equal weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from segany.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

torch.set_num_threads(max(1, torch.get_num_threads()))

TINY = SamConfig(
    name="tiny",
    image_encoder=ImageEncoderConfig(
        img_size=128,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=4,
        window_size=5,  # 16x16 grid is not a multiple of 5: exercises window padding
        global_attn_indexes=(1,),
    ),
    prompt_embed_dim=32,
    prompt_encoder=PromptEncoderConfig(mask_in_chans=8),
    mask_decoder=MaskDecoderConfig(transformer_mlp_dim=64, iou_head_hidden_dim=48),
)


@pytest.fixture(scope="module")
def one_thread():
    """Pin torch to one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny models gain nothing from threads, and a busy machine makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (official init leaves rel-pos and
    pos_embed at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def official_from_config(cfg: SamConfig):
    """Build the official ``segment_anything`` model with the same architecture."""
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    e, d = cfg.image_encoder, cfg.mask_decoder
    grid = e.img_size // e.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=e.img_size,
            patch_size=e.patch_size,
            embed_dim=e.embed_dim,
            depth=e.depth,
            num_heads=e.num_heads,
            mlp_ratio=e.mlp_ratio,
            out_chans=cfg.prompt_embed_dim,
            qkv_bias=e.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=e.use_rel_pos,
            window_size=e.window_size,
            global_attn_indexes=list(e.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(e.img_size, e.img_size),
            mask_in_chans=cfg.prompt_encoder.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=d.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=d.transformer_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=d.transformer_mlp_dim,
                num_heads=d.transformer_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=d.iou_head_depth,
            iou_head_hidden_dim=d.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    ).eval()


def make_pair(cfg: SamConfig, seed: int = 0):
    """(official model, segany fp32 model) with identical random weights."""
    torch.manual_seed(seed)
    official = randomize_(official_from_config(cfg), seed)
    ours = segany.build_sam_model(cfg).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def make_amg_pair(cfg: SamConfig = None, seed: int = 0, gain: float = 30.0):
    """Model pair whose masks are image-dependent regions with decisive logits (random weights
    otherwise give near-constant masks): the hypernetwork outputs are centred over channels
    and scaled by ``gain``, identically in both models."""
    official, ours = make_pair(cfg or TINY, seed)
    sd = official.state_dict()
    for k in sd:
        if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k:
            # zero-mean over the output channels removes the common mode of the upscaled
            # features, so logits follow image content; the gain makes them decisive
            w = sd[k] - sd[k].mean(0, keepdim=True)
            sd[k] = w * gain
    official.load_state_dict(sd)
    ours.load_state_dict(sd)
    return official, ours


@pytest.fixture(scope="session")
def tiny_pair():
    return make_pair(TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    return tiny_pair[1]


@pytest.fixture(scope="session")
def vit_b_pair(tmp_path_factory):
    """Official vit_b with random weights, and segany's loaded from the same file through the
    drop-in ``sam_model_registry["vit_b"](checkpoint=...)``."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    official = randomize_(sam_model_registry["vit_b"](), 0).eval()
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    ours = segany.sam_model_registry["vit_b"](checkpoint=str(path))
    path.unlink()
    return official, ours


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB image with some structure (uint8, (H, W, 3))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6)
            img[..., c] += np.sin(xx * fx + yy * fy + ph)
    img += rng.normal(0, 0.2, img.shape)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)
