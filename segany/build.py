"""Build SAM models from configs, checkpoints or variant names."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import VARIANTS, SamConfig, get_config
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from .precision import check_precision, precision_name, resolve_device, resolve_precision

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
BUNDLED_MODEL = "segany_tiny"  # shipped inside the package; the default of load_model()


def bundled_model_path() -> Path:
    """Path of the bundled model's weights (``segany/models/segany_tiny.safetensors``)."""
    return Path(__file__).resolve().parent / "models" / f"{BUNDLED_MODEL}.safetensors"


def text_encoder_path(model_path: str | os.PathLike) -> Path:
    """Where the text encoder of a text-trained checkpoint lives: beside it, as
    ``<stem>.text.safetensors`` (the small CLIP its text path was trained with)."""
    return Path(model_path).with_suffix(".text.safetensors")


def bundled_config(state_dict: ckpt.StateDict) -> SamConfig:
    """The bundled architecture, with the prompt encoder's text path sized from
    ``state_dict`` when it has one (a text-trained bundled model)."""
    config = get_config(BUNDLED_MODEL)
    if ckpt.TEXT_PROJECTION_KEY not in state_dict:
        return config
    dim = int(state_dict[ckpt.TEXT_PROJECTION_KEY].shape[1])
    prompt = dataclasses.replace(config.prompt_encoder, text_embed_dim=dim)
    return dataclasses.replace(config, prompt_encoder=prompt)


def attach_text_encoder(model: Sam, encoder: object) -> Sam:
    """Set ``model.text_encoder`` (what :class:`~segany.SamPredictor` turns ``text=`` into
    embeddings with) without making it a submodule: the model's state dict, ``.to()`` and
    ``.parameters()`` stay those of SAM alone. Returns ``model``."""
    object.__setattr__(model, "text_encoder", encoder)
    return model


def build_sam_model(config: SamConfig) -> Sam:
    """Instantiate an (uninitialized-weights) :class:`Sam` from a config, in fp32, train mode."""
    enc = config.image_encoder
    dim = config.prompt_embed_dim
    grid = enc.grid_size
    dec = config.mask_decoder
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size,
            patch_size=enc.patch_size,
            in_chans=enc.in_chans,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            out_chans=dim,
            qkv_bias=enc.qkv_bias,
            use_abs_pos=enc.use_abs_pos,
            use_rel_pos=enc.use_rel_pos,
            window_size=enc.window_size,
            global_attn_indexes=enc.global_attn_indexes,
            norm_eps=enc.norm_eps,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=config.prompt_encoder.mask_in_chans,
            text_embed_dim=config.prompt_encoder.text_embed_dim,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dim,
                num_heads=dec.transformer_num_heads,
                mlp_dim=dec.transformer_mlp_dim,
                attention_downsample_rate=dec.attention_downsample_rate,
            ),
            num_multimask_outputs=dec.num_multimask_outputs,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )


def set_precision(model: Sam, precision: str | torch.dtype) -> Sam:
    """Put the model in a compute precision (in place); returns ``model``.

    ``precision`` is a name (see :mod:`segany.precision`; ``"auto"`` is decided for this model
    by :func:`segany.precision_check.choose_precision`) or a floating dtype. fp32/bf16/fp16 cast
    the image encoder and mask decoder; the prompt encoder stays in fp32 (its Fourier features
    need the range) and the predictor casts embeddings between the parts. ``"int8"`` runs the
    image encoder's linear layers in int8 on the CPU (:func:`segany.quantize.quantize_encoder`;
    the state dict is unchanged) with everything else in fp32; any other precision turns those
    layers back into the fp32 ones, bit-exactly, without reloading.
    """
    from .quantize import dequantize_encoder, is_quantized, quantize_encoder

    if isinstance(precision, torch.dtype):
        name = precision_name(precision)
    else:
        from .precision_check import choose_precision

        name = choose_precision(precision, model)[0]
    if name == "int8" and model.device.type != "cpu":
        raise ValueError(
            f"precision 'int8' runs on the CPU; the model is on {model.device} "
            "(load it with device='cpu', or use bf16/fp16 on a GPU)"
        )
    if is_quantized(model) and name != "int8":
        dequantize_encoder(model)
    dtype = resolve_precision(name, model.device)
    model.image_encoder.to(dtype)
    model.mask_decoder.to(dtype)
    if name == "int8":
        quantize_encoder(model)
    return model


def build_sam(
    variant: str | SamConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    precision: str = "auto",
    device: str | torch.device | None = None,
) -> Sam:
    """Build a SAM model ready for inference (eval mode).

    Args:
        variant: ``"vit_b" | "vit_l" | "vit_h"`` or a :class:`SamConfig`. ``None`` infers the
            architecture from ``checkpoint`` (or means ``"vit_h"`` without one, as the official
            ``build_sam`` does). The official positional form ``build_sam("sam_vit_h.pth")`` is
            accepted too.
        checkpoint: optional path to an official-format state dict (.pth or .safetensors),
            loaded strictly.
        precision: ``"auto"`` (bf16 where native; int8 on CPUs where it is measured faster and
            accurate for this model; else fp32), ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA if available else CPU.
    """
    if (
        isinstance(variant, (str, os.PathLike))
        and str(variant) not in VARIANTS
        and checkpoint is None
        and (Path(variant).exists() or Path(variant).suffix in CHECKPOINT_SUFFIXES)
    ):
        variant, checkpoint = None, variant  # official build_sam(checkpoint) call
    if variant is None and checkpoint is not None:
        return load_model(checkpoint, precision=precision, device=device)
    config = variant if isinstance(variant, SamConfig) else get_config(variant or "vit_h")
    sd = None if checkpoint is None else ckpt.read_state_dict(checkpoint)
    return _assemble(config, sd, str(checkpoint), precision, device)


def load_model(
    model: str | os.PathLike | None = None,
    *,
    precision: str = "auto",
    device: str | torch.device | None = None,
) -> Sam:
    """Load a SAM model by name or checkpoint path, inferring the architecture.

    ``None`` (or ``"segany_tiny"``) loads the bundled model, shipped inside the package (no
    network). ``"vit_b" | "vit_l" | "vit_h"`` use the official checkpoint, downloaded once into
    the cache (``$SEGANY_HOME``, default ``~/.cache/segany``) and verified by sha256. A path
    loads any official-format state dict; the architecture (sizes, depth, heads, windows) is
    read from it. A model with a text path (the bundled one included, once it ships one) gets
    the small CLIP saved beside its file (``<stem>.text.safetensors``, see
    :func:`text_encoder_path`) as ``model.text_encoder``, so ``text=`` works offline.
    """
    name = BUNDLED_MODEL if model is None else str(model)
    if name == BUNDLED_MODEL and not Path(name).exists():
        path = bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"the bundled model file is missing from this installation ({path}); "
                "reinstall segany, or pass a checkpoint path or one of "
                f"{sorted(VARIANTS)} (official weights, downloaded once into the cache)"
            )
        sd = ckpt.read_state_dict(path)
        sam = _assemble(bundled_config(sd), sd, str(path), precision, device)
        return _with_text_encoder(sam, path, device)
    if name in VARIANTS and not Path(name).exists():
        from .hub import download_checkpoint

        path = download_checkpoint(name)
        config = get_config(name)
    else:
        path = Path(name)
        config = None
    sd = ckpt.read_state_dict(path)
    if config is None:
        config = ckpt.infer_config(sd, name=Path(path).stem)
    return _with_text_encoder(_assemble(config, sd, str(path), precision, device), path, device)


def _with_text_encoder(sam: Sam, path: str | os.PathLike, device: object) -> Sam:
    """Attach the text encoder found beside a text-trained checkpoint (if any) to ``sam``."""
    text_path = text_encoder_path(path)
    if sam.prompt_encoder.has_text and text_path.is_file():
        from .text import load_small_clip

        attach_text_encoder(sam, load_small_clip(text_path, device=resolve_device(device)))
    return sam


def _assemble(
    config: SamConfig,
    state_dict: ckpt.StateDict | None,
    source: str,
    precision: str,
    device: str | torch.device | None,
) -> Sam:
    """Build ``config``, load ``state_dict`` strictly (if given), move to the device, eval mode,
    cast to the precision: the common tail of :func:`build_sam` and :func:`load_model`."""
    dev = resolve_device(device)
    check_precision(precision)
    model = build_sam_model(config)
    if state_dict is not None:
        ckpt.load_into(model, state_dict, source=source)
    return set_precision(model.to(dev).eval(), precision)


def compile_model(model: Sam, **compile_kwargs: object) -> Sam:
    """Opt-in ``torch.compile`` of the image encoder (in place; state-dict names unchanged).

    Uses ``nn.Module.compile`` so the module tree and checkpoints stay official. The first
    ``set_image`` afterwards pays the compilation; keyword arguments go to ``torch.compile``
    (e.g. ``mode="max-autotune"`` on a GPU).
    """
    model.image_encoder.compile(**compile_kwargs)
    return model


def _registry_builder(variant: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None) -> Sam:
        return build_sam(variant, checkpoint, precision="fp32", device="cpu")

    build.__doc__ = f"Official-compatible builder for {variant} (fp32, CPU, eval mode)."
    return build


build_sam_vit_b = _registry_builder("vit_b")
build_sam_vit_l = _registry_builder("vit_l")
build_sam_vit_h = _registry_builder("vit_h")
build_sam_default = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
}
