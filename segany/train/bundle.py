"""Turn a trained checkpoint into the bundled model file (``segany/models/*.safetensors``).

``python -m segany.train.bundle SRC [DST]``: reads a SAM state dict (a run's
``model.safetensors`` or a training checkpoint ``last.pt``), stores it in fp16 (half the size;
weights are loaded back into fp32) with the architecture and provenance as safetensors
metadata, and checks that it loads strictly as the bundled architecture.
``--text-encoder FILE`` also ships the small CLIP a text-trained model was trained with, beside
it (``segany_tiny.text.safetensors``), after checking that its embedding size fits the model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ..build import BUNDLED_MODEL, bundled_config, bundled_model_path, text_encoder_path
from ..io.files import sha256_file
from .outputs import save_state_dict


def bundle_model(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``src``'s weights to ``dst`` (default: the package's bundled model path) in
    ``dtype``; returns ``dst``. Fails if they do not fit the bundled architecture."""
    from ..build import build_sam_model
    from ..checkpoint import load_into, read_state_dict

    src = Path(src)
    sd = read_state_dict(src)  # a run's model.safetensors, or a checkpoint's "model" entry
    load_into(build_sam_model(bundled_config(sd)), sd, source=str(src))  # strict check
    out = Path(dst) if dst is not None else bundled_model_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(
        sd, out, dtype=dtype, metadata={"architecture": BUNDLED_MODEL, **(metadata or {})}
    )
    return out


def bundle_text_encoder(src: str | os.PathLike, model: str | os.PathLike | None = None) -> Path:
    """Copy the small-CLIP file ``src`` beside the bundled ``model`` (default: the package's),
    as ``<model stem>.text.safetensors``; returns that path. Fails unless the model has a text
    path of ``src``'s embedding size."""
    from ..checkpoint import TEXT_PROJECTION_KEY, read_state_dict
    from ..text import load_small_clip, save_small_clip

    model_path = Path(model) if model is not None else bundled_model_path()
    encoder = load_small_clip(src)
    sd = read_state_dict(model_path)
    if TEXT_PROJECTION_KEY not in sd:
        raise ValueError(f"{model_path} has no text path; bundle a text-trained model first")
    if int(sd[TEXT_PROJECTION_KEY].shape[1]) != encoder.embed_dim:
        raise ValueError(
            f"{src} gives {encoder.embed_dim}-dim embeddings, {model_path}'s text path takes "
            f"{int(sd[TEXT_PROJECTION_KEY].shape[1])}"
        )
    out = text_encoder_path(model_path)
    save_small_clip(encoder, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segany.train.bundle", description=__doc__)
    p.add_argument("src", help="model.safetensors of a run, or a training checkpoint .pt")
    p.add_argument("dst", nargs="?", help=f"default: {bundled_model_path()}")
    p.add_argument("--meta", action="append", default=[], help="KEY=VALUE provenance metadata")
    p.add_argument("--text-encoder", metavar="FILE", help="the small CLIP to ship beside it")
    args = p.parse_args(argv)
    meta = dict(item.split("=", 1) for item in args.meta)
    outs = [bundle_model(args.src, args.dst, metadata=meta)]
    if args.text_encoder:
        outs.append(bundle_text_encoder(args.text_encoder, args.dst))
    for out in outs:
        digest = sha256_file(out)
        print(json.dumps({"path": str(out), "bytes": out.stat().st_size, "sha256": digest}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
