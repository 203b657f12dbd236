"""``segany zeroshot instances ANNOTATIONS.json --images DIR (--detections DETS.json | --boxes
gt) --out OUT``: instance segmentation from detector boxes (box prompts, one refinement pass:
the paper's appendix D.4), scored by COCO mask AP with pycocotools. Bad input (malformed
annotations or detections, a missing image) is exit code 2; a model that cannot be loaded
is 3."""

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

__all__ = ["cmd_instances", "register"]


def register(actions: Any) -> None:
    """Add the ``instances`` action to the subparsers ``actions``."""
    p = actions.add_parser(
        "instances",
        help="masks from detector boxes scored by COCO mask AP",
        description=(
            "Prompt SAM with each detection's box, feed the most confident mask back with the "
            "same box once (the SAM paper's refinement pass) and keep the detection's category "
            "and score; writes OUT/segmentations.json (COCO results with RLE), "
            "OUT/results.json, OUT/results.md and OUT/ap.png. Mask AP, AP50, AP75 and AP by "
            "size by pycocotools; with --boxes gt also the mIoU of each mask with its own "
            "ground truth."
        ),
    )
    add_annotations_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--detections",
        metavar="DETS.json",
        help="COCO detections results [{image_id, category_id, bbox XYWH, score}]",
    )
    src.add_argument(
        "--boxes",
        choices=("gt",),
        help="gt: the ground-truth boxes stand in for a detector (score 1)",
    )
    p.add_argument(
        "--no-refine", action="store_true", help="skip the refinement pass (first pass only)"
    )
    p.add_argument(
        "--batch", type=positive_int, default=32, metavar="B", help="boxes decoded together (32)"
    )
    p.set_defaults(func=cmd_instances)


def cmd_instances(args: argparse.Namespace) -> int:
    """Run ``segany zeroshot instances``; prints results.json's metrics."""
    from ..zeroshot.coco_eval import load_annotations
    from ..zeroshot.common import image_entries, read_json
    from ..zeroshot.instances import check_detections
    from ..zeroshot.runs import run_instances

    out = Path(args.out)
    check_out_dir(out)
    detections = None
    with bad_input():  # before loading the model
        gt = load_annotations(args.annotations)
        image_entries(gt, args.images, args.max_images)
        if args.detections is not None:
            detections = check_detections(
                read_json(args.detections), set(gt.getImgIds()), set(gt.getCatIds())
            )
    make_dir(out, "--out")
    model = load_model(args)
    with bad_input():
        results = run_instances(
            gt,
            args.images,
            out,
            model,
            detections=detections,
            model_name=str(args.model),
            refine=not args.no_refine,
            max_images=args.max_images,
            batch=args.batch,
            progress=not args.no_progress,
            say=status,
        )
    print(json.dumps(results["metrics"], indent=1))
    status(f"wrote {out / 'segmentations.json'}, {out / 'results.json'}, {out / 'results.md'}")
    return EXIT_OK
