"""``segany zeroshot proposals ANNOTATIONS.json --images DIR --out OUT``: object proposals
(the automatic generator on a 64x64 grid, the paper's appendix D.3) scored by class-agnostic
mask AR@10/100/1000 with pycocotools. Bad input (unreadable or malformed annotations, a
missing image) is exit code 2; a model that cannot be loaded is 3."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    add_annotations_args,
    bad_input,
    check_out_dir,
    load_model,
    make_dir,
    positive_int,
    status,
)

__all__ = ["cmd_proposals", "register"]


def register(actions: Any) -> None:
    """Add the ``proposals`` action to the subparsers ``actions``."""
    p = actions.add_parser(
        "proposals",
        help="object proposals scored by class-agnostic mask AR@1000",
        description=(
            "The automatic mask generator as the SAM paper's proposal experiment (64x64 point "
            "grid, no crops, no predicted-IoU or stability filter, NMS 0.9, ranked by the mean "
            "of predicted IoU and stability, top 1000) on every image of ANNOTATIONS.json; "
            "writes OUT/proposals.json (COCO results with RLE), OUT/results.json, "
            "OUT/results.md and OUT/ar.png. Mask AR@10/100/1000 for all, small, medium and "
            "large objects, and frequent/common/rare on LVIS, by pycocotools (useCats=0)."
        ),
    )
    add_annotations_args(p)
    p.add_argument(
        "--points-per-side",
        type=positive_int,
        default=64,
        metavar="N",
        help="point grid (default: %(default)s, the paper's)",
    )
    p.add_argument(
        "--max-proposals",
        type=positive_int,
        default=1000,
        metavar="K",
        help="proposals kept per image (default: %(default)s)",
    )
    p.set_defaults(func=cmd_proposals)


def cmd_proposals(args: argparse.Namespace) -> int:
    """Run ``segany zeroshot proposals``; prints results.json's metrics."""
    from ..zeroshot.coco_eval import load_annotations
    from ..zeroshot.common import image_entries
    from ..zeroshot.proposals import ProposalSettings
    from ..zeroshot.runs import run_proposals

    out = Path(args.out)
    check_out_dir(out)
    with bad_input():  # before loading the model
        settings = ProposalSettings(
            points_per_side=args.points_per_side, max_proposals=args.max_proposals
        )
        gt = load_annotations(args.annotations)
        image_entries(gt, args.images, args.max_images)
    make_dir(out, "--out")
    model = load_model(args)
    with bad_input():
        results = run_proposals(
            gt,
            args.images,
            out,
            model,
            model_name=str(args.model),
            settings=settings,
            max_images=args.max_images,
            progress=not args.no_progress,
            say=status,
        )
    print(json.dumps(results["metrics"], indent=1))
    status(f"wrote {out / 'proposals.json'}, {out / 'results.json'}, {out / 'results.md'}")
    return EXIT_OK
