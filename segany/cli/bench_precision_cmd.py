"""``segany bench-precision [--model M] [--data DATA]``: int8 (and bf16 where this CPU runs it
natively) against fp32 for one model, on held-out data and on this machine; the report that
``--precision auto`` reads (see :mod:`segany.precision_check`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    CheckedSamples,
    bad_input,
    load_model,
    positive_int,
    status,
)


def register(sub: Any) -> None:
    """Add ``segany bench-precision`` to the subparsers ``sub``."""
    from ..precision_check import BOUNDS, DEFAULT_DATA, MIN_SPEEDUP

    p = sub.add_parser(
        "bench-precision",
        help="measure int8 (and native bf16) against fp32 for a model: accuracy and speed",
        description=(
            "Run the model in fp32 and in int8 (and in bf16 where this CPU runs it natively) on "
            "the CPU and compare: mask IoU between the precisions for the same one-point "
            "prompts, the predicted-IoU error, 1-point and 5-point mIoU against the ground "
            "truth, the automatic generator's mask sets (recall and precision of the lower "
            "precision's set against fp32's), and the image encoder's time on this CPU. "
            "Prints the tables and writes the report --precision auto reads (int8 is chosen "
            f"only within the bound: mask IoU >= {BOUNDS['mask_iou_min']}, mIoU drop <= "
            f"{BOUNDS['miou_drop_max']}, and at least {MIN_SPEEDUP}x faster)."
        ),
    )
    p.add_argument(
        "--model",
        metavar="M",
        default=DEFAULT_MODEL,
        help=f"checkpoint path, segany_tiny or vit_b|vit_l|vit_h (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--data",
        metavar="DATA",
        default=DEFAULT_DATA,
        help=(
            "held-out images with ground-truth masks: an SA-1B folder, a COCO instances .json "
            f"or procedural:N[:SEED] (default: {DEFAULT_DATA}, the bundled model's held-out "
            "scenes)"
        ),
    )
    p.add_argument(
        "--max-images", metavar="N", type=positive_int, default=50,
        help="use the first N images (default: 50)",
    )  # fmt: skip
    p.add_argument(
        "--amg-images", metavar="N", type=int, default=3,
        help="images for the automatic-generator comparison (default: 3; 0 skips it)",
    )  # fmt: skip
    p.add_argument(
        "--amg-pred-iou-thresh", metavar="T", type=float, default=0.88,
        help="the generator's predicted-IoU threshold there (default: 0.88, the official one)",
    )  # fmt: skip
    p.add_argument(
        "--amg-stability-score-thresh", metavar="T", type=float, default=0.95,
        help="the generator's stability threshold there (default: 0.95, the official one)",
    )  # fmt: skip
    p.add_argument(
        "--repeats", metavar="N", type=positive_int, default=3,
        help="timed encoder runs per precision, after a warm-up (default: 3)",
    )  # fmt: skip
    p.add_argument(
        "--no-speed", action="store_true",
        help="skip the speed measurement (then --precision auto keeps fp32 on this CPU class)",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="REPORT.json", default=None,
        help="write the report here (default: the cache, where --precision auto finds it)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_precision)


def _table(accuracy: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| precision | mask IoU vs fp32 (mean / min) | IoU-score error (mean / max) | "
        "1-pt mIoU (fp32 → it) | 5-pt mIoU (fp32 → it) | AMG recall / precision vs fp32 | "
        "within bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in accuracy.items():
        amg = a["amg"]
        amg_cell = (
            "-" if amg["recall"] is None
            else f"{amg['recall']:.3f} / {amg['precision']:.3f} ({amg['images']} img)"
        )  # fmt: skip
        rows.append(
            f"| {name} | {a['mask_iou_mean']:.4f} / {a['mask_iou_min']:.4f} | "
            f"{a['score_error_mean']:.4f} / {a['score_error_max']:.4f} | "
            f"{a['miou_1pt']['fp32']:.4f} → {a['miou_1pt'][name]:.4f} | "
            f"{a['miou_5pt']['fp32']:.4f} → {a['miou_5pt'][name]:.4f} | {amg_cell} | "
            f"{'yes' if a['passes'] else 'no'} |"
        )
    return "\n".join(rows)


def cmd_bench_precision(args: argparse.Namespace) -> int:
    """``segany bench-precision``: measure, print, write the report."""
    from ..data.datasets import open_dataset
    from ..precision import cpu_has_native_bf16
    from ..precision_bench import measure_accuracy, measure_speed
    from ..precision_check import build_report, save_report
    from ..quantize import cpu_class

    if args.amg_images < 0:
        with bad_input():
            raise ValueError(f"--amg-images must be >= 0, got {args.amg_images}")
    for flag in ("amg_pred_iou_thresh", "amg_stability_score_thresh"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            with bad_input():
                raise ValueError(
                    f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}"
                )
    amg = {
        "pred_iou_thresh": args.amg_pred_iou_thresh,
        "stability_score_thresh": args.amg_stability_score_thresh,
    }
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        with bad_input():
            raise ValueError(f"--out {out} is a folder; give the report's file name")
    with bad_input():
        dataset = open_dataset(args.data)
    status(f"dataset {args.data}: {len(dataset)} image(s)")
    args.precision, args.device = "fp32", "cpu"  # the reference; int8 runs on the CPU
    model = load_model(args)
    others = ["int8"] + (["bf16"] if cpu_has_native_bf16() else [])
    accuracy = {}
    for name in others:
        status(f"{name} vs fp32 on {min(len(dataset), args.max_images)} image(s) ...")
        with bad_input():  # a dataset without usable masks
            accuracy[name] = measure_accuracy(
                model, CheckedSamples(dataset), name, max_images=args.max_images,
                amg_images=args.amg_images, amg_settings=amg, progress=not args.quiet,
            )  # fmt: skip
    speed = None
    if not args.no_speed:
        status(f"timing the image encoder ({args.repeats} runs each) ...")
        speed = measure_speed(model, others, repeats=args.repeats)
    report = build_report(model, str(args.model), accuracy, speed, str(args.data))
    print(f"model {args.model}, data {args.data}, CPU class {cpu_class()}")
    print()
    print(_table(accuracy))
    if speed is not None:
        print()
        print("| precision | image encoder (s) | vs fp32 |")
        print("|---|---|---|")
        for name, s in speed.items():
            print(f"| {name} | {s['seconds']:.3f} | {s.get('speedup', 1.0):.2f}x |")
    path = save_report(report, out)
    status(f"wrote {path}")
    return EXIT_OK
