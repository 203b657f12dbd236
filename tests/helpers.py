"""Helpers shared by the tests (imported as ``tests.helpers``; tests import no other test
module): the tiny test config, random-weight model pairs (official package vs segany with equal
weights), a structured random image, and the ONNX Runtime vs PyTorch comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import segany
from segany.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

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


# ---------------------------------------------------------------------------- ONNX Runtime

IOU_TOL = 1e-3  # ONNX Runtime vs PyTorch, fp32
LOGIT_BAND = 1e-2  # mask pixels may differ only where |logit| is below this


def assert_masks_match(logits: np.ndarray, ref_logits: np.ndarray) -> None:
    """Masks equal except on pixels whose reference logit is within LOGIT_BAND of 0."""
    assert logits.shape == ref_logits.shape
    differ = (logits > 0) != (ref_logits > 0)
    bad = differ & (np.abs(ref_logits) > LOGIT_BAND)
    assert not bad.any(), f"{int(bad.sum())} mask pixels differ away from the threshold"


def assert_same_prediction(a, b) -> None:
    """(masks-as-logits, scores, low_res) of two predictors agree."""
    np.testing.assert_allclose(a[1], b[1], atol=IOU_TOL, rtol=0)
    np.testing.assert_allclose(a[2], b[2], atol=1e-3, rtol=1e-3)
    assert_masks_match(a[0], b[0])


def prompt_suite(h: int, w: int) -> list[dict]:
    """1 point, 3 points, a box, points + box, and (filled in by the caller) a mask input."""
    rng = np.random.default_rng(h + w)
    pts = rng.uniform([0, 0], [w, h], size=(3, 2))
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    return [
        {"point_coords": pts[:1], "point_labels": np.array([1])},
        {"point_coords": pts, "point_labels": np.array([1, 0, 1])},
        {"box": box},
        {"point_coords": pts[:2], "point_labels": np.array([1, 0]), "box": box},
    ]


def run_suite(ours, ref, h: int, w: int) -> None:
    """Every prompt of :func:`prompt_suite`, with and without a mask input fed back, multimask
    on and off: ``ours`` (OnnxPredictor) agrees with ``ref`` (SamPredictor)."""
    for prompt in prompt_suite(h, w):
        for multimask in (True, False):
            a = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            b = ref.predict(**prompt, multimask_output=multimask, return_logits=True)
            assert a[0].shape == (3 if multimask else 1, h, w)
            assert_same_prediction(a, b)
            fed = {**prompt, "mask_input": b[2][:1]}
            assert_same_prediction(
                ours.predict(**fed, multimask_output=multimask, return_logits=True),
                ref.predict(**fed, multimask_output=multimask, return_logits=True),
            )
    # a mask input alone (no sparse prompt: zero points in the decoder)
    low = ref.predict(**prompt_suite(h, w)[0], multimask_output=False)[2]
    assert_same_prediction(
        ours.predict(mask_input=low, return_logits=True),
        ref.predict(mask_input=low, return_logits=True),
    )


def quiet_options():
    """Session options without thread spinning: these tests alternate ONNX Runtime and torch
    calls on a small shared CPU, where spinning pools slow each other down."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def onnx_predictor(path: Path, **kwargs):
    """An OnnxPredictor on the export in ``path`` with :func:`quiet_options`."""
    from segany.runtime import OnnxPredictor

    return OnnxPredictor(path, session_options=quiet_options(), **kwargs)
