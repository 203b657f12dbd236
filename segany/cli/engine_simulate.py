"""``segany engine simulate --data DATA --out OUT``: play the data engine's loop against a
hidden truth (:mod:`segany.engine.simulate`): rounds (``--schedule``: stage-1 ``manual``,
stage-2 ``prefill``, stage-3 ``auto``) of a simulated annotator working through the annotation
server's API on fresh images (the interactive protocol, up to a click budget or an IoU target;
reviewing prefilled proposals), a retrain after each manual and prefill round; a report per round (clicks and simulated seconds
per mask, masks per image, final mIoU against the truth, the model's held-out 1-point and
5-point mIoU) as ``OUT/report.json``, ``report.md`` and ``report.png``.

Bad input (bad rounds, budget, target, data, an output folder that is not empty) is exit code
2. :func:`register` adds the action to the ``segany engine`` subparsers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import EXIT_OK, CliError, UsageError, bad_input, status

__all__ = ["cmd_simulate", "register"]


def register(actions: Any) -> None:
    """Add the ``simulate`` action to the subparsers ``actions`` (of ``segany engine``)."""
    p = actions.add_parser(
        "simulate",
        help="measure the data engine's loop with a simulated annotator against ground truth",
        description=(
            "Rounds (--schedule: manual = stage 1, prefill = stage 2, auto = stage 3) by a "
            "simulated annotator against a hidden-truth dataset, through the annotation "
            "server's HTTP API. Manual: for each true mask, click 1 at "
            "the point farthest from its boundary, then at the largest error region "
            "(foreground or background), until the IoU reaches --iou-target or --click-budget "
            "clicks are spent; accept with the simulated time. After each round the model is "
            "retrained on the masks so far (switched only when better on the held-out images). "
            "Prefill: the round's images are prefilled, each proposal accepted when it matches "
            "a true mask at --iou-target, else rejected, then the missing masks clicked. Auto: "
            "the automatic stage over the round's images, imported as source auto; no retrain. "
            "Writes OUT/report.json, report.md, report.png and the project in OUT/project."
        ),
    )
    p.add_argument(
        "--data", required=True, metavar="DATA",
        help="the hidden truth: procedural:N[:SEED], an SA-1B folder or a COCO .json",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (new or empty)")
    p.add_argument(
        "--rounds", type=int, default=None, metavar="R",
        help="R stage-1 rounds, the same as --schedule manual:R (default: 3)",
    )  # fmt: skip
    p.add_argument(
        "--schedule", default=None, metavar="S",
        help="the rounds in order, KIND:N[,KIND:N...] with KIND manual (stage 1), prefill "
        "(stage 2) or auto (stage 3), e.g. manual:3,prefill:1,auto:1; a retrain follows each "
        "manual and prefill round",
    )  # fmt: skip
    p.add_argument(
        "--prefill-method", choices=("auto", "detector"), default=None,
        help="prefill rounds: the method (default: detector once the accepted manual masks "
        "cover 4 images, a detector trained before the first prefill; else auto)",
    )  # fmt: skip
    p.add_argument(
        "--prefill-min-score", type=float, default=None, metavar="S",
        help="prefill rounds: the method's --min-score (default: its own)",
    )  # fmt: skip
    p.add_argument(
        "--seconds-per-review", type=float, default=1.0, metavar="S",
        help="prefill rounds: simulated seconds to accept or reject a proposal (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--detector-steps", type=int, default=20, metavar="K",
        help="steps of the detector trained before the first detector prefill (default: 20)",
    )  # fmt: skip
    p.add_argument(
        "--detector-arch", choices=("tiny", "mobilenet_v3"), default="tiny",
        help="that detector's architecture (default: tiny)",
    )  # fmt: skip
    p.add_argument(
        "--auto-preset", choices=("default", "sa1b"), default="default",
        help="auto rounds: the generator preset (default: default)",
    )  # fmt: skip
    p.add_argument(
        "--points-per-side", type=int, default=None, metavar="P",
        help="the automatic generator's grid in auto rounds and auto prefill (default: theirs)",
    )  # fmt: skip
    p.add_argument(
        "--images-per-round", type=int, default=8, metavar="N",
        help="fresh images per round (default: 8)",
    )  # fmt: skip
    p.add_argument(
        "--click-budget", type=int, default=20, metavar="K",
        help="most clicks per mask (default: 20, standing for the paper's 30 s rule)",
    )  # fmt: skip
    p.add_argument(
        "--iou-target", type=float, default=0.9, metavar="T",
        help="accept once the IoU with the truth reaches T (default: 0.9)",
    )  # fmt: skip
    p.add_argument(
        "--seconds-per-click", type=float, default=1.5, metavar="S",
        help="simulated seconds per click, added to the measured latency (default: 1.5)",
    )  # fmt: skip
    p.add_argument(
        "--brush-seconds", type=float, default=None, metavar="S",
        help="a mask that missed --iou-target is corrected by hand (brush and eraser) in S "
        "simulated seconds and the truth is stored (default: stored as the model made it)",
    )  # fmt: skip
    p.add_argument(
        "--masks-per-image", type=int, default=None, metavar="M",
        help="annotate at most M true masks per image, in index order (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--model", default="segany_tiny", metavar="M",
        help="the starting model: the bundled segany_tiny or a weights file",
    )  # fmt: skip
    p.add_argument(
        "--weak-from", default=None, metavar="M",
        help="start from a weak model instead: M with its mask decoder re-initialised and "
        "trained --weak-steps steps on procedural scenes (written to OUT/weak/)",
    )  # fmt: skip
    p.add_argument("--weak-steps", type=int, default=0, metavar="K", help="see --weak-from")
    p.add_argument(
        "--weak-keep", type=float, default=0.0, metavar="F",
        help="with --weak-from: keep this share of M's decoder weights, blended with the random "
        "ones, in [0, 1) (default: 0, fully random)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=int, default=100, metavar="S",
        help="retrain steps after each round (0: no retrain; default: 100)",
    )  # fmt: skip
    p.add_argument(
        "--config", metavar="CONFIG", default=None,
        help="TOML or JSON training config of the retrains (default: a decoder-only fine-tune)",
    )  # fmt: skip
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="override a retrain config field (TOML value syntax)",
    )  # fmt: skip
    p.add_argument(
        "--eval-masks-per-image", type=int, default=None, metavar="N",
        help="held-out evaluation masks per image (default: all)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the image order (default: 0)")
    p.add_argument("--device", default=None, help="where retrains run (default: CUDA if any)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_simulate)


def _positive(value: int | None, flag: str, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low}; got {value}")


def cmd_simulate(args: argparse.Namespace) -> int:
    """``segany engine simulate``: run the loop; print the table (stdout)."""
    from ..engine.simulate.context import parse_schedule

    _positive(args.rounds, "--rounds")
    if args.schedule is not None and args.rounds is not None:
        raise UsageError("give --rounds R or --schedule S, not both (--rounds R is manual:R)")
    if args.schedule is not None:
        try:
            kinds = parse_schedule(args.schedule)
        except ValueError as e:
            raise UsageError(f"--schedule: {e}") from None
    else:
        kinds = ("manual",) * (3 if args.rounds is None else args.rounds)
    args.rounds = len(kinds)
    _positive(args.detector_steps, "--detector-steps")
    _positive(args.points_per_side, "--points-per-side")
    if args.prefill_min_score is not None and not 0 <= args.prefill_min_score <= 1:
        raise UsageError(f"--prefill-min-score must be in [0, 1]; got {args.prefill_min_score}")
    if not args.seconds_per_review >= 0:
        raise UsageError(f"--seconds-per-review must be >= 0; got {args.seconds_per_review}")
    _positive(args.images_per_round, "--images-per-round")
    _positive(args.click_budget, "--click-budget")
    _positive(args.masks_per_image, "--masks-per-image")
    _positive(args.eval_masks_per_image, "--eval-masks-per-image")
    _positive(args.steps, "--steps", allow_zero=True)
    _positive(args.weak_steps, "--weak-steps", allow_zero=True)
    if args.brush_seconds is not None and not args.brush_seconds >= 0:
        raise UsageError(f"--brush-seconds must be >= 0; got {args.brush_seconds}")
    if not 0 <= args.weak_keep < 1:
        raise UsageError(f"--weak-keep must be in [0, 1); got {args.weak_keep}")
    if not 0 < args.iou_target <= 1:
        raise UsageError(f"--iou-target must be in (0, 1]; got {args.iou_target}")
    if not args.seconds_per_click >= 0:
        raise UsageError(f"--seconds-per-click must be >= 0; got {args.seconds_per_click}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")
    try:
        from ..engine.simulate import (
            SimulationConfig,
            check_config,
            make_weak_model,
            run_simulation,
        )
        from ..engine.store import StoreError
    except ModuleNotFoundError as e:
        raise CliError(
            f"segany engine simulate needs the engine extra ({e.name} is missing): "
            "pip install 'segany[engine]'"
        ) from None
    from ..data.datasets import open_dataset
    from ..precision import resolve_device

    with bad_input():
        dataset = open_dataset(args.data)
        resolve_device(args.device)
        if args.config is not None:
            from ..engine.retrain import retrain_config

            retrain_config(args.config, args.set)
    need = args.rounds * args.images_per_round
    if len(dataset) < need:
        raise UsageError(
            f"--data has {len(dataset)} images; {args.rounds} rounds of {args.images_per_round} "
            f"fresh images need {need}"
        )
    model = args.model
    if args.weak_from is not None:
        status(
            f"making a weak model from {args.weak_from} ({args.weak_steps} decoder steps, "
            f"{args.weak_keep:g} of its decoder kept)"
        )
        with bad_input():
            model = str(
                make_weak_model(
                    out / "weak", base=args.weak_from, steps=args.weak_steps, keep=args.weak_keep,
                    seed=args.seed,
                    device=args.device,
                )
            )  # fmt: skip
    config = SimulationConfig(
        data=args.data, out=out, rounds=args.rounds,
        images_per_round=args.images_per_round, click_budget=args.click_budget,
        iou_target=args.iou_target, seconds_per_click=args.seconds_per_click,
        brush_seconds=args.brush_seconds,
        masks_per_image=args.masks_per_image, model=model, steps=args.steps,
        retrain_config=args.config, retrain_overrides=tuple(args.set),
        eval_masks_per_image=args.eval_masks_per_image, seed=args.seed, device=args.device,
        round_kinds=kinds, prefill_method=args.prefill_method,
        prefill_min_score=args.prefill_min_score, seconds_per_review=args.seconds_per_review,
        detector_steps=args.detector_steps, detector_arch=args.detector_arch,
        auto_preset=args.auto_preset, points_per_side=args.points_per_side,
    )  # fmt: skip
    with bad_input():
        check_config(config)
    try:
        report = run_simulation(config, progress=status)
    except StoreError as e:
        raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from ..engine.simulate import markdown_table

        print(markdown_table(report))
    status(f"report: {Path(config.out) / 'report.md'} ({report['seconds']:.0f} s)")
    return EXIT_OK
