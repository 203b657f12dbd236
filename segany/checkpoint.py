"""Safe, strict checkpoint reading and architecture inference.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (no arbitrary code runs) or
with safetensors. :func:`infer_config` recovers the architecture of any official-format state
dict, including non-standard sizes.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.pth``/``.pt`` (weights-only unpickling) or ``.safetensors``.

    Accepts a bare state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``;
    a ``module.`` prefix (DistributedDataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"could not read safetensors file {path}: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and "
                f"plain containers, which could run code when unpickled (loaded with "
                f"weights_only=True). Re-save the state dict alone, e.g. "
                f"torch.save(model.state_dict(), path). Details: {str(e).splitlines()[0]}"
            ) from None
        except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
            raise CheckpointError(
                f"could not read checkpoint {path}: the file is truncated or corrupted "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                f"Download it again."
            ) from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> StateDict:
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state dict (a mapping of names to tensors); "
            f"found {type(obj).__name__}"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


#: The key whose presence marks a checkpoint with a text path (its width is ``shape[1]``).
TEXT_PROJECTION_KEY = "prompt_encoder.text_projection.weight"


def infer_config(state_dict: StateDict, name: str = "custom") -> SamConfig:
    """Recover the :class:`SamConfig` of an official-format SAM state dict.

    Image size comes from ``pos_embed`` (or the global rel-pos tables), depth from the block
    count, heads from the rel-pos head dim, window size and global-attention layers from the
    rel-pos table lengths. Decoder heads cannot be read from shapes; the official 8 is assumed.
    """
    sd = state_dict
    pre = "image_encoder."
    try:
        patch_w = sd[pre + "patch_embed.proj.weight"]
    except KeyError:
        raise CheckpointError(
            "not a SAM state dict: missing 'image_encoder.patch_embed.proj.weight'"
        ) from None
    embed_dim, in_chans, patch_size = patch_w.shape[0], patch_w.shape[1], patch_w.shape[-1]
    depth = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    if depth == 0:
        raise CheckpointError("not a SAM state dict: no image_encoder.blocks.* found")
    rel_sizes = []
    for i in range(depth):
        t = sd.get(f"{pre}blocks.{i}.attn.rel_pos_h")
        rel_sizes.append(None if t is None else (t.shape[0] + 1) // 2)
    use_rel_pos = all(s is not None for s in rel_sizes)
    pos = sd.get(pre + "pos_embed")
    if pos is not None:
        img_size = pos.shape[1] * patch_size
    elif use_rel_pos:
        img_size = max(rel_sizes) * patch_size
    else:
        img_size = 1024
    grid = img_size // patch_size
    if use_rel_pos:
        head_dim = sd[f"{pre}blocks.0.attn.rel_pos_h"].shape[1]
        num_heads = embed_dim // head_dim
        global_idx = tuple(i for i, s in enumerate(rel_sizes) if s == grid)
        windows = {s for s in rel_sizes if s != grid}
        if len(windows) > 1:
            raise CheckpointError(f"inconsistent window sizes in rel-pos tables: {sorted(windows)}")
        window_size = windows.pop() if windows else 14
    else:
        num_heads = max(1, embed_dim // 64)
        global_idx = ()
        window_size = 0
    mlp_dim = sd[f"{pre}blocks.0.mlp.lin1.weight"].shape[0]
    out_chans = sd[pre + "neck.0.weight"].shape[0]

    dec = "mask_decoder."
    tdepth = _count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    t_dim = sd[dec + "iou_token.weight"].shape[1]
    return SamConfig(
        name=name,
        image_encoder=ImageEncoderConfig(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_dim / embed_dim,
            qkv_bias=f"{pre}blocks.0.attn.qkv.bias" in sd,
            use_abs_pos=pos is not None,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            global_attn_indexes=global_idx,
        ),
        prompt_embed_dim=out_chans,
        prompt_encoder=PromptEncoderConfig(
            mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            text_embed_dim=(
                int(sd[TEXT_PROJECTION_KEY].shape[1]) if TEXT_PROJECTION_KEY in sd else None
            ),
        ),
        mask_decoder=MaskDecoderConfig(
            num_multimask_outputs=sd[dec + "mask_tokens.weight"].shape[0] - 1,
            transformer_depth=tdepth,
            transformer_mlp_dim=sd[dec + "transformer.layers.0.mlp.lin1.weight"].shape[0],
            transformer_num_heads=8,
            attention_downsample_rate=t_dim
            // sd[dec + "transformer.final_attn_token_to_image.q_proj.weight"].shape[0],
            iou_head_depth=_count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
            iou_head_hidden_dim=sd[dec + "iou_prediction_head.layers.0.weight"].shape[0],
        ),
    )


def _short(items: list[str], limit: int = 10) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_into(model: torch.nn.Module, state_dict: StateDict, source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``model``, raising :class:`CheckpointError` that lists
    missing keys, unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match the model architecture:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            parts.append(f"  shape mismatches ({len(mismatched)}): {_short(mismatched, 5)}")
        parts.append(
            "  Use segany.load_model(path) to infer the architecture from the file, or pick the "
            "variant that matches it."
        )
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)
