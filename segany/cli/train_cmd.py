"""``segany train CONFIG``: train or fine-tune SAM (see :mod:`segany.train`). A bad config,
device, dataset or initial checkpoint path is bad input (exit code 2).
Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m segany train CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .common import EXIT_OK, bad_input


def register(sub: Any) -> None:
    """Add ``segany train`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="train or fine-tune SAM (the paper's recipe) from a TOML/JSON config",
        description=(
            "Train SAM with the paper's recipe (focal+dice 20:1 and IoU MSE, min-loss over the "
            "three masks, 11 rounds of simulated interactive prompting, AdamW with warm-up and "
            "step decay). CONFIG is a TOML or JSON file of segany.train.TrainConfig fields "
            "(see configs/). Re-running the same command resumes from OUT_DIR/checkpoints/"
            "last.pt. Under torchrun each process trains on its own share of every step."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="TOML or JSON training config")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config field (TOML value syntax), e.g. --set steps=100 --set lr=1e-4",
    )
    p.add_argument("--out-dir", metavar="DIR", help="override out_dir")
    p.add_argument(
        "--restart",
        action="store_true",
        help="ignore an existing checkpoint in out_dir and start from step 0",
    )
    p.add_argument(
        "--max-time",
        type=float,
        metavar="SECONDS",
        help="stop cleanly with a checkpoint after this much wall time; re-run to resume",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _check_inputs(config: Any, device: str | None) -> None:
    """Raise UsageError if the device, the initial model or a dataset of ``config`` cannot be
    used, in the order :func:`segany.train.train` sets them up. Run only after training failed,
    to tell bad input from a bug without opening everything twice on every run."""
    from ..precision import resolve_device
    from ..train.data import open_training_data
    from ..train.model import build_training_model

    with bad_input():
        resolve_device(device)
        build_training_model(config)
        open_training_data(config.data)
        if config.val_data:
            open_training_data(config.val_data)


def cmd_train(args: argparse.Namespace) -> int:
    """``segany train``: run (or resume) training, then print the last record and file paths."""
    from ..train import load_train_config, train
    from ..train.trainer import CURVES_NAME, LOG_NAME, MODEL_NAME
    from ..train.validate import BEST_MODEL_NAME, VAL_LOG_NAME

    overrides = list(args.set)
    if args.out_dir:
        overrides.append(f"out_dir={json.dumps(args.out_dir)}")
    with bad_input():
        config = load_train_config(args.config, overrides)
    try:
        record = train(
            config,
            device=args.device,
            resume=not args.restart,
            progress=not args.no_progress,
            max_time_s=args.max_time,
        )
    except (ValueError, FileNotFoundError):
        _check_inputs(config, args.device)
        raise
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return EXIT_OK
    out = config.out_dir
    if record:
        print(json.dumps(record))
    print(f"log: {out}/{LOG_NAME}\ncurves: {out}/{CURVES_NAME}\nmodel: {out}/{MODEL_NAME}")
    if config.val_data:
        print(f"validation: {out}/{VAL_LOG_NAME}\nbest model: {out}/{BEST_MODEL_NAME}")
    return EXIT_OK
