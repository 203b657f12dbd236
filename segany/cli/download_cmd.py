"""``segany download VARIANT [--root DIR]``: fetch an official SAM checkpoint into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import hub
from .common import EXIT_OK, ModelUnavailableError, status


def register(sub: Any) -> None:
    """Add ``segany download`` to the subparsers ``sub``."""
    dl = sub.add_parser(
        "download",
        help="download an official SAM checkpoint into the cache",
        description=(
            "Download (or resume, or verify) an official SAM checkpoint and print its path. "
            "Without --root the cache is $SEGANY_HOME, else ~/.cache/segany."
        ),
    )
    dl.add_argument(
        "variant",
        metavar="VARIANT",
        choices=list(hub.CHECKPOINTS),
        help=f"which checkpoint: {', '.join(hub.CHECKPOINTS)}",
    )
    dl.add_argument(
        "--root",
        metavar="DIR",
        default=None,
        help="download into DIR instead of the cache folder",
    )
    dl.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    """``segany download``: fetch an official checkpoint into the cache, print its path."""
    root = Path(args.root).expanduser() if args.root else None
    dest = hub.checkpoint_path(args.variant, root=root)
    status(f"fetching the {args.variant} checkpoint into {dest.parent} ...")
    try:
        path = hub.download_checkpoint(args.variant, root=root)
    except hub.DownloadError as e:
        raise ModelUnavailableError(str(e)) from e
    print(path)
    return EXIT_OK
