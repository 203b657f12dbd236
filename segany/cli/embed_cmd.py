"""``segany embed IMAGE --out FILE.safetensors``: encode an image once and save its embedding,
to prompt it later with ``segany segment IMAGE --embedding FILE`` without re-encoding."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    UsageError,
    add_model_args,
    bad_input,
    encode_image,
    load_predictor,
    make_dir,
)


def register(sub: Any) -> None:
    """Add ``segany embed`` to the subparsers ``sub``."""
    emb = sub.add_parser(
        "embed",
        help="encode an image once and save its embedding",
        description=(
            "Run the image encoder on IMAGE and save the embedding, to prompt the image later "
            "with 'segany segment IMAGE --embedding FILE' without re-encoding."
        ),
    )
    emb.add_argument("image", metavar="IMAGE", help="input image file (any format Pillow reads)")
    emb.add_argument(
        "--out",
        metavar="FILE",
        required=True,
        help="where to write the embedding (safetensors; folders are created)",
    )
    add_model_args(emb)
    emb.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    """``segany embed``: encode an image and save the embedding; prints the file's path."""
    from ..io.image import load_image

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(
            f"--out {out} is a folder; give a file path such as {out / 'image.safetensors'}"
        )
    with bad_input():
        image = load_image(args.image)
    predictor = load_predictor(args)
    encode_image(predictor, image)
    make_dir(out.parent, "folder")
    predictor.save_embedding(out)
    print(out)
    return EXIT_OK
