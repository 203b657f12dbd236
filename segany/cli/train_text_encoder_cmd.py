"""``segany train-text-encoder --out FILE``: train the small CLIP-style text encoder (a region
encoder and a text tower over the closed caption vocabulary, contrastive loss) on captioned
procedural scenes without the held-out colour-shape combinations (see
:mod:`segany.train.text_encoder`). ``segany train`` with ``text_prompts = true`` then uses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import EXIT_OK, UsageError, make_dir, positive_float, positive_int, status


def register(sub: Any) -> None:
    """Add ``segany train-text-encoder`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "train-text-encoder",
        help="train the small CLIP text encoder on captioned procedural scenes",
        description=(
            "Train the small CLIP-style pair (a region encoder over mask crops and a text "
            "tower over the closed caption vocabulary, multi-positive contrastive loss) on "
            "captioned procedural scenes that never show the held-out colour-shape "
            "combinations, and save it as a .safetensors file for --text-encoder and for "
            "segany train with text_prompts = true."
        ),
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    recipe = "default: the recipe of docs/text_prompts.md"
    p.add_argument("--steps", type=positive_int, help=f"optimizer steps ({recipe})")
    p.add_argument(
        "--batch-size", type=positive_int, help=f"caption-region pairs per step ({recipe})"
    )
    p.add_argument("--lr", type=positive_float, help=f"AdamW learning rate ({recipe})")
    p.add_argument("--embed-dim", type=positive_int, help=f"embedding size ({recipe})")
    p.add_argument("--seed", type=int, help=f"initialisation and batch seed ({recipe})")
    p.add_argument(
        "--log-every", type=int, default=100, metavar="N", help="print the loss every N steps"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_train_text_encoder)


def cmd_train_text_encoder(args: argparse.Namespace) -> int:
    """``segany train-text-encoder``: train, save, print ``{"steps", "seconds", "loss_first",
    "loss_last", "out"}``."""
    from ..train.text_encoder import train_text_encoder

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, got {out}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file path")
    if out.exists() and not args.force:
        raise UsageError(f"--out {out} exists; give --force to overwrite it")
    make_dir(out.parent, "--out's folder")
    given = {
        k: v
        for k in ("steps", "batch_size", "lr", "seed", "embed_dim")
        if (v := getattr(args, k)) is not None
    }
    status("training the small CLIP text encoder")
    record = train_text_encoder(out, log_every=max(0, args.log_every), **given)
    print(json.dumps({**record, "out": str(out)}))
    return EXIT_OK
