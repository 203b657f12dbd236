"""``segany info``: versions, default device, what ``--precision auto`` resolves to and the
checkpoint cache."""

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
            "Print the segany and torch versions, the default device, what --precision auto "
            "resolves to and why, the checkpoint cache folder and which official checkpoints "
            "it holds."
        ),
    )
    info.set_defaults(func=cmd_info)


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

    from ..precision import cpu_has_native_bf16, precision_name, resolve_device, resolve_precision

    cuda = torch.cuda.is_available()
    device = resolve_device(None)
    auto = precision_name(resolve_precision("auto", device))
    cpu_bf16 = cpu_has_native_bf16()
    if device.type == "cuda":
        try:
            gpu = torch.cuda.get_device_name(device)
        except Exception:  # pragma: no cover - driver oddities
            gpu = "the GPU"
        why = f"{gpu} {'supports' if auto == 'bf16' else 'does not support'} bf16"
    else:
        why = (
            "this CPU runs bf16 natively: AVX512-BF16 or AMX"
            if cpu_bf16
            else "this CPU has no native bf16 (no AVX512-BF16 or AMX): fp32 is faster"
        )
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
        f"precision auto: {auto} on {device} ({why})",
        f"CPU native bf16: {'yes' if cpu_bf16 else 'no'}",
        f"cache dir: {root} ({source}{exists})",
        f"default --model: {DEFAULT_MODEL}",
        "official checkpoints:",
    ]
    for variant, info in hub.CHECKPOINTS.items():
        lines.append(f"  {variant}  {info.filename}  {_describe_checkpoint(info, root)}")
    print("\n".join(lines))
    return EXIT_OK
