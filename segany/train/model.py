"""The model and optimizer to train: the SAM to start from (a checkpoint or a from-scratch
initialisation), frozen parts, AdamW parameter groups with layer-wise lr decay, and the
learning-rate schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build import build_sam_model
from ..checkpoint import infer_config, load_into, read_state_dict
from ..config import SamConfig, get_config
from ..modeling import Sam
from .config import TrainConfig
from .seeds import INIT_SEED

#: State-dict prefixes of the prompt encoder's text path (absent from models without one).
TEXT_PARAM_PREFIXES = ("prompt_encoder.text_projection.", "prompt_encoder.text_embed.")


def _with_text_path(arch: SamConfig, text_embed_dim: int | None, source: str) -> SamConfig:
    """``arch`` with a text path of width ``text_embed_dim`` (None: unchanged)."""
    if text_embed_dim is None:
        return arch
    have = arch.prompt_encoder.text_embed_dim
    if have is not None and have != text_embed_dim:
        raise ValueError(
            f"{source} has a text path for {have}-dim embeddings but the text encoder gives "
            f"{text_embed_dim}-dim ones; use a matching text_encoder or another init"
        )
    pe = dataclasses.replace(arch.prompt_encoder, text_embed_dim=text_embed_dim)
    return dataclasses.replace(arch, prompt_encoder=pe)


def build_training_model(config: TrainConfig, text_embed_dim: int | None = None) -> Sam:
    """The model to train: ``config.init`` loaded strictly (fine-tuning; architecture inferred)
    or a fresh ``config.model`` with ViT-style initialisation; frozen parts set, drop-path and
    gradient checkpointing applied. fp32 master weights, train mode.

    With ``config.text_prompts`` the model gets a text path for ``text_embed_dim``-dim
    embeddings (default: read from ``config.text_encoder``); an ``init`` without one keeps all
    its weights and starts the text path fresh."""
    if config.text_prompts and text_embed_dim is None:
        from .text import load_training_text_encoder

        text_embed_dim = int(load_training_text_encoder(config).embed_dim)
    if not config.text_prompts:
        text_embed_dim = None
    if config.init:
        sd = read_state_dict(config.init)
        arch = _with_text_path(
            infer_config(sd, name=Path(config.init).stem), text_embed_dim, config.init
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # a fresh text path is the same on every run
            sam = build_sam_model(arch)
        fresh = {k: v for k, v in sam.state_dict().items() if k.startswith(TEXT_PARAM_PREFIXES)}
        load_into(sam, {**fresh, **sd}, source=config.init)
    else:
        sam = build_sam_model(_with_text_path(get_config(config.model), text_embed_dim, "model"))
        _init_weights(sam)
    for part, frozen in (
        (sam.image_encoder, config.freeze_image_encoder),
        (sam.prompt_encoder, config.freeze_prompt_encoder),
    ):
        part.requires_grad_(not frozen)
    if config.trainable:
        _train_only(sam, config.trainable)
    sam.image_encoder.set_drop_path(config.drop_path)
    sam.image_encoder.grad_checkpointing = config.grad_checkpointing
    return sam.train()


def _train_only(sam: Sam, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter whose state-dict name is not under one of ``prefixes``."""
    names = [name for name, _ in sam.named_parameters()]

    def under(name: str, prefix: str) -> bool:
        prefix = prefix.rstrip(".")
        return name == prefix or name.startswith(prefix + ".")

    unknown = [p for p in prefixes if not any(under(n, p) for n in names)]
    if unknown:
        tops = sorted({".".join(n.split(".")[:2]) for n in names})
        raise ValueError(
            f"trainable prefixes {unknown} match no parameter of the model; "
            f"parameter names start with one of {tops}"
        )
    for name, p in sam.named_parameters():
        if not any(under(name, prefix) for prefix in prefixes):
            p.requires_grad_(False)
    if not any(p.requires_grad for p in sam.parameters()):
        raise ValueError(
            f"nothing to train: trainable={list(prefixes)} lies entirely inside frozen parts"
        )


#: Gain of the decoder's shared query/key initialisation (see :func:`_init_weights`).
DECODER_QK_GAIN = 2.0


def _init_weights(sam: Sam) -> None:
    """From-scratch init: truncated-normal (std 0.02) linear layers and absolute position
    embedding, as ViT/MAE do; in the mask decoder's attention layers the key projection starts
    equal to the query projection, both scaled by :data:`DECODER_QK_GAIN`. Everything else
    keeps PyTorch's defaults.

    Why the decoder init: queries and keys carry the random-Fourier positional encodings of
    prompts and image tokens. With equal projections, ``q·k = peᵀ WᵀW pe'`` is a positive
    kernel from step 0, so a prompt already attends to the image tokens near it; with
    independent random projections a from-scratch model spent ~600 steps predicting nothing
    before it found that alignment. Only values change, never names or shapes."""
    gen = torch.Generator().manual_seed(INIT_SEED)
    for m in sam.image_encoder.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(
                    torch.nn.init.trunc_normal_(torch.empty_like(m.weight), std=0.02, generator=gen)
                )
                if m.bias is not None:
                    m.bias.zero_()
    if sam.image_encoder.pos_embed is not None:
        with torch.no_grad():
            pe = sam.image_encoder.pos_embed
            pe.copy_(torch.nn.init.trunc_normal_(torch.empty_like(pe), std=0.02, generator=gen))
    with torch.no_grad():
        for m in sam.mask_decoder.transformer.modules():
            q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                q.weight.mul_(DECODER_QK_GAIN)
                k.weight.copy_(q.weight)
                k.bias.copy_(q.bias)


def param_groups(sam: Sam, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases, norms, embeddings and position
    tables; layer-wise lr decay for the ViT (block ``i`` of ``d``: ``layer_decay ** (d - i)``,
    patch/position embeddings ``layer_decay ** (d + 1)``, neck and the rest 1)."""
    depth = len(sam.image_encoder.blocks)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in sam.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("image_encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")):
            layer = 0
        else:
            layer = depth + 1
        scale = config.layer_decay ** (depth + 1 - layer)
        no_decay = (
            p.ndim <= 1
            or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
            or ".norm" in name
            or "embed" in name.split(".")[-2]
            or "token" in name
        )
        wd = 0.0 if no_decay else config.weight_decay
        groups.setdefault((scale, wd), []).append(p)
    return [
        {"params": ps, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in sorted(groups.items())
    ]


def build_optimizer(sam: Sam, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (the learning rate is set every step from
    :func:`lr_factor`)."""
    return torch.optim.AdamW(
        param_groups(sam, config),
        lr=config.lr,
        betas=tuple(config.betas),
        weight_decay=0.0,
        # One fused kernel for all parameters instead of a loop of small ops per tensor: on a
        # 2-core CPU the loop took ~15 % of a first-prompt step. Same algorithm.
        fused=device.type in ("cpu", "cuda"),
    )


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then × ``lr_decay_factor`` at each
    ``lr_decay_steps`` boundary (SAM's step schedule)."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return config.lr_decay_factor ** sum(step >= s for s in config.lr_decay_steps)
