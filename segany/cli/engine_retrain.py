"""``segany engine retrain DIR``: retrain the project's model on its accepted masks
(:mod:`segany.engine.retrain`): snapshot a dataset version, hold out a fixed split of the
images, fine-tune the current model, evaluate old and new on the held-out images (1-point
and 5-point mIoU), register the new model version with its evaluation, export its ONNX
decoder, and switch the project to it only when it is better (or with ``--force-switch``).

Bad input (not a project, no accepted masks, bad stages, a config that does not parse, a bad
device) is exit code 2. :func:`register` adds the action to the ``segany engine``
subparsers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import EXIT_OK, CliError, UsageError, bad_input, status

__all__ = ["cmd_retrain", "parse_stages", "register"]


def register(actions: Any) -> None:
    """Add the ``retrain`` action to the subparsers ``actions`` (of ``segany engine``)."""
    p = actions.add_parser(
        "retrain",
        help="fine-tune the project's model on its accepted masks; switch when it is better",
        description=(
            "Snapshot the accepted masks of --stages into a dataset version (DIR/datasets/"
            "vNNNN/, SA-1B layout), hold out a fixed fraction of the images (by sha256: an "
            "image stays held out across retrains), fine-tune the current model on the rest "
            "(decoder only by default, or --config), evaluate the current and the new model on "
            "the held-out images (interactive points: 1-point and 5-point mIoU), register the "
            "new model version with its evaluation and switch the project to it only when its "
            "score (the mean of both) is higher, or with --force-switch. Files go to "
            "DIR/retrain/rNNNN/ (report.json last)."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="project folder")
    p.add_argument("--db", metavar="URL", default=None, help="the project's database URL")
    p.add_argument(
        "--config", metavar="CONFIG", default=None,
        help="TOML or JSON training config (segany.train.TrainConfig fields; init, data and "
        "out_dir are set by the retrain). Default: a decoder-only fine-tune",
    )  # fmt: skip
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="override a config field (TOML value syntax), e.g. --set lr=5e-5",
    )  # fmt: skip
    p.add_argument(
        "--stages", default="1,2,3", metavar="1,2,3",
        help="data-engine stages whose masks are used (default: 1,2,3)",
    )  # fmt: skip
    p.add_argument(
        "--oversample-manual", type=int, default=1, metavar="K",
        help="manual masks' images count K times against prefill/auto ones (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--holdout", type=float, default=0.1, metavar="F",
        help="fraction of the images held out for evaluation (default: 0.1, at least one)",
    )  # fmt: skip
    p.add_argument(
        "--force-switch", action="store_true",
        help="switch to the new model even when it is not better",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=None, metavar="N", help="training steps")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if any)")
    p.add_argument(
        "--eval-masks-per-image", type=int, default=None, metavar="N",
        help="evaluate at most N masks per held-out image (default: all)",
    )  # fmt: skip
    p.add_argument("--no-onnx", action="store_true", help="do not export the ONNX decoder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_retrain)


def parse_stages(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; UsageError for anything but a list of stages 1, 2, 3."""
    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    if not parts or any(s not in ("1", "2", "3") for s in parts):
        raise UsageError(f"--stages must be a comma-separated list of 1, 2, 3; got {text!r}")
    return tuple(sorted({int(s) for s in parts}))


def cmd_retrain(args: argparse.Namespace) -> int:
    """``segany engine retrain``: run the retrain; print the report (stdout)."""
    try:
        from sqlalchemy.exc import OperationalError

        from ..engine.retrain import retrain, retrain_config
        from ..engine.store import Project, StoreError
    except ModuleNotFoundError as e:
        raise CliError(
            f"segany engine retrain needs the engine extra ({e.name} is missing): "
            "pip install 'segany[engine]'"
        ) from None
    from ..precision import resolve_device

    stages = parse_stages(args.stages)
    if args.oversample_manual < 1:
        raise UsageError(f"--oversample-manual must be >= 1; got {args.oversample_manual}")
    if not 0 <= args.holdout < 1:
        raise UsageError(f"--holdout must be in [0, 1); got {args.holdout}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be positive; got {args.steps}")
    if args.eval_masks_per_image is not None and args.eval_masks_per_image < 1:
        raise UsageError(
            f"--eval-masks-per-image must be positive; got {args.eval_masks_per_image}"
        )
    with bad_input():
        config = retrain_config(args.config, args.set)
        resolve_device(args.device)
    try:
        project = Project.open(args.dir, db_url=args.db)
    except (StoreError, OperationalError) as e:
        raise UsageError(str(e)) from e
    with project:
        try:
            result = retrain(
                project, config=config, stages=stages, oversample_manual=args.oversample_manual,
                holdout=args.holdout, force_switch=args.force_switch, steps=args.steps,
                device=args.device, eval_masks_per_image=args.eval_masks_per_image,
                export_decoder=not args.no_onnx, progress=not args.no_progress,
            )  # fmt: skip
        except StoreError as e:
            raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    status(f"retrain {result.run_dir.name} done in {result.seconds['total']:.1f} s")
    return EXIT_OK
