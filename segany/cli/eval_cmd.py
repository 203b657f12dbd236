"""``segany eval``: the SAM paper's interactive point evaluation on a dataset.

Registered by :mod:`segany.cli.main` (``add_eval_parser``); exit codes and error reporting are
main's: 0 success, 2 bad usage or input (bad DATA spec, unreadable annotations), 3 model not
available.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Same as :data:`segany.eval.DEFAULT_CLICKS` (not imported: keeps ``segany --help`` free of
#: OpenCV and the evaluation code).
DEFAULT_CLICKS = (1, 2, 3, 5, 9)
OUTPUT_FILES = ("eval.json", "eval.md", "eval.png")


def parse_clicks(text: str) -> tuple[int, ...]:
    """``"1,2,3,5,9"`` -> ``(1, 2, 3, 5, 9)`` (positive integers, sorted, unique)."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid clicks {text!r}: expected positive integers separated by commas, "
            f"e.g. 1,2,3,5,9"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid clicks {text!r}: expected positive integers separated by commas, "
            f"e.g. 1,2,3,5,9"
        )
    return tuple(sorted(set(values)))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return v


def add_eval_parser(sub: Any, add_model_args: Any) -> argparse.ArgumentParser:
    """Register ``segany eval`` on main's subparsers; ``add_model_args`` adds --model,
    --device and --precision."""
    default = ",".join(str(k) for k in DEFAULT_CLICKS)
    p = sub.add_parser(
        "eval",
        help="interactive point evaluation (mIoU after 1, 2, 3, 5, 9 clicks)",
        description=(
            "Simulate a user clicking on every ground-truth mask of DATA (SAM paper protocol: "
            "first click farthest from the mask boundary, each next click in the largest "
            "error region) and report the mean IoU after each number of clicks, for the "
            "'top' track (mask of highest predicted IoU, then single-mask refinement with the "
            "previous logits) and the 'oracle' track (best of 3 masks against the ground "
            "truth). Prints a Markdown table; with --out also writes "
            + ", ".join(OUTPUT_FILES)
            + "."
        ),
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help=(
            "an SA-1B folder (<stem>.jpg|png + <stem>.json), a COCO instances .json (images "
            "next to it or under images/), or procedural:N[:SEED] (N generated scenes)"
        ),
    )
    p.add_argument(
        "--clicks",
        metavar="K,K,...",
        type=parse_clicks,
        default=DEFAULT_CLICKS,
        help=f"click counts to report; clicks run up to the largest (default: {default})",
    )
    p.add_argument(
        "--max-masks-per-image",
        metavar="N",
        type=_positive,
        default=None,
        help="evaluate at most N masks per image, chosen reproducibly (default: all)",
    )
    p.add_argument(
        "--max-images",
        metavar="N",
        type=_positive,
        default=None,
        help="evaluate only the first N images (default: all)",
    )
    p.add_argument(
        "--seed",
        metavar="S",
        type=int,
        default=0,
        help="seed of the per-image mask choice with --max-masks-per-image (default: 0)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="also write " + ", ".join(OUTPUT_FILES) + " into DIR (created if needed)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    return p


def cmd_eval(args: argparse.Namespace, load_model: Any, status: Any) -> int:
    """Run ``segany eval``; returns the exit code (0). Errors propagate to main, which maps
    ValueError/FileNotFoundError to 2 and model problems to 3."""
    from ..data.datasets import open_dataset
    from ..eval.interactive import evaluate_interactive
    from ..predictor import SamPredictor

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    dataset = open_dataset(args.data)  # bad DATA fails before the model loads
    status(f"dataset {args.data}: {len(dataset)} image(s)")
    predictor = SamPredictor(load_model(args))
    result = evaluate_interactive(
        predictor,
        dataset,
        clicks=args.clicks,
        max_masks_per_image=args.max_masks_per_image,
        max_images=args.max_images,
        seed=args.seed,
        progress=not args.quiet,
    )
    status(result.summary())
    print(result.table())
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create --out {out}: {e.strerror or e}") from None
        result.write_json(
            out / "eval.json",
            extra={
                "data": str(args.data),
                "model": str(args.model),
                "precision": args.precision,
                "max_masks_per_image": args.max_masks_per_image,
                "max_images": args.max_images,
                "seed": args.seed,
            },
        )
        result.write_markdown(out / "eval.md")
        result.plot(out / "eval.png")
        status(f"wrote {', '.join(OUTPUT_FILES)} to {out}")
    return 0
