"""``segany info [--model M]``: versions, default device, the CPU class, what ``--precision
auto`` picks for the model and why, and the checkpoint cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .. import __version__, hub
from .common import DEFAULT_MODEL, EXIT_OK


def register(sub: Any) -> None:
    """Add ``segany info`` to the subparsers ``sub``."""
    info = sub.add_parser(
        "info",
        help="show versions, device, precision and cached checkpoints",
        description=(
            "Print the segany and torch versions, the default device, the CPU class, what "
            "--precision auto picks for --model and why (bf16 where native; int8 where measured "
            "faster and accurate for that model, see 'segany bench-precision'; else fp32), the "
            "checkpoint cache folder and which official checkpoints it holds."
        ),
    )
    info.add_argument(
        "--model",
        metavar="M",
        default=DEFAULT_MODEL,
        help=f"the model --precision auto is decided for (default: {DEFAULT_MODEL})",
    )
    info.set_defaults(func=cmd_info)


def _auto_for(model_name: str, device: Any) -> str:
    """What ``--precision auto`` picks for ``model_name`` on ``device``, and why (one line);
    a model that cannot be loaded says so instead."""
    import segany

    from ..precision_check import choose_precision

    try:
        model = segany.load_model(model_name, precision="fp32", device=device)
    except Exception as e:  # noqa: BLE001 - info reports, it does not fail
        return f"unknown for {model_name} (it could not be loaded: {e})"
    name, why = choose_precision("auto", model)
    return f"{name} for {model_name} on {device} ({why})"


def _describe_checkpoint(info: hub.CheckpointInfo, root: Path) -> str:
    path = root / info.filename
    part = path.with_name(path.name + ".part")
    try:
        if path.is_file():
            size = path.stat().st_size
            if size == info.num_bytes:
                return f"present ({size:,} bytes; sha256 checked on use)"
            return (
                f"incomplete or corrupt ({size:,} of {info.num_bytes:,} bytes): delete it and run "
                f"'segany download {info.variant}'"
            )
        if part.is_file():
            return (
                f"partial download ({part.stat().st_size:,} of {info.num_bytes:,} bytes): "
                f"'segany download {info.variant}' resumes it"
            )
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return f"not downloaded ('segany download {info.variant}')"


def cmd_info(args: argparse.Namespace) -> int:
    """``segany info``: versions, device, precision, cache."""
    import platform

    import torch

    from ..precision import cpu_has_native_bf16, resolve_device
    from ..quantize import cpu_class, int8_scheme, weight_bits

    cuda = torch.cuda.is_available()
    device = resolve_device(None)
    cpu_bf16 = cpu_has_native_bf16()
    cls = cpu_class()
    engine, qmax = int8_scheme(cls)
    root = hub.cache_dir()
    source = (
        "from SEGANY_HOME" if os.environ.get("SEGANY_HOME") else "default; SEGANY_HOME overrides"
    )
    exists = "" if root.is_dir() else ", does not exist yet"
    lines = [
        f"segany {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA available: {'yes' if cuda else 'no'}",
        f"default device: {device} (torch CPU threads: {torch.get_num_threads()})",
        f"precision auto: {_auto_for(args.model, device)}",
        f"CPU native bf16: {'yes' if cpu_bf16 else 'no'}",
        f"CPU class: {cls} (int8 engine {engine}, {weight_bits(qmax)}-bit weights"
        f"{'' if weight_bits(qmax) == 8 else ': no VNNI, u8 x s8 products would saturate'})",
        f"cache dir: {root} ({source}{exists})",
        f"default --model: {DEFAULT_MODEL}",
        "official checkpoints:",
    ]
    for variant, info in hub.CHECKPOINTS.items():
        lines.append(f"  {variant}  {info.filename}  {_describe_checkpoint(info, root)}")
    print("\n".join(lines))
    return EXIT_OK
