"""``segany demo [--out DIR]``: a generated sample image, segmented from a point, from a box and
automatically ("segment everything"), with overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .auto_cmd import GeneratorDefault, make_generator, segment_everything
from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_model_args,
    load_model,
    make_dir,
    status,
)
from .segment_cmd import segment_image

# The demo's automatic-generator filters (predicted IoU, stability) for the bundled model: it is
# small and its IoU scores and logit margins are lower than SAM's; on the demo's sample image the
# official 0.88 / 0.95 keep the 3 objects but drop the nested part, 0.7 / 0.9 keep it (6 masks).
DEMO_TINY_THRESHOLDS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}


def register(sub: Any) -> None:
    """Add ``segany demo`` to the subparsers ``sub``."""
    demo = sub.add_parser(
        "demo",
        help="segment a generated sample image from a point and from a box",
        description=(
            "Write a generated sample image to OUT/sample.png, then segment one object from a "
            "point prompt (3 masks, OUT/point/) and another from a box (OUT/box/), writing mask "
            "PNGs, overlays and scores.json like 'segany segment', and run the automatic mask "
            "generator on it (OUT/auto/, like 'segany auto --overlay')."
        ),
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=GeneratorDefault("pred_iou_thresh"),
        help=(
            "automatic generator's predicted-IoU filter (default: %(default)s, the official "
            f"value; {DEMO_TINY_THRESHOLDS['pred_iou_thresh']} for the bundled segany_tiny, "
            "whose IoU head scores lower)"
        ),
    )
    demo.add_argument(
        "--stability-score-thresh",
        type=float,
        default=GeneratorDefault("stability_score_thresh"),
        help=(
            "automatic generator's stability filter (default: %(default)s, the official value; "
            f"{DEMO_TINY_THRESHOLDS['stability_score_thresh']} for the bundled segany_tiny)"
        ),
    )
    add_model_args(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``segany demo``: sample image, a point prompt, a box prompt and automatic masks, with
    one model load and the image encoded once."""
    from ..data.sample import sample_image
    from ..predictor import SamPredictor
    from ..viz import save_image_png

    out = Path(args.out)
    make_dir(out, "--out")
    image, objects = sample_image()
    sample = out / "sample.png"
    save_image_png(sample, image)
    status(f"wrote {sample}")
    disc, panel = objects[0], objects[2]
    embedding = out / "sample.embedding.safetensors"
    embedding.unlink(missing_ok=True)  # may come from another model
    model = load_model(args)
    runs = [
        ("point", disc, [(*disc.point, 1)], [], True),
        ("box", panel, [], [panel.box], False),
    ]
    for name, obj, points, boxes, multimask in runs:
        status(f"--- {name} prompt on the {obj.name}")
        segment_image(
            SamPredictor(model),
            image,
            points,
            boxes,
            out / name,
            multimask=multimask,
            embedding=embedding,
            image_name=str(sample),
            model_name=str(args.model),
        )

    status("--- automatic masks (segment everything)")
    tiny = str(args.model) == DEFAULT_MODEL
    thresholds = {}
    for knob, tiny_value in DEMO_TINY_THRESHOLDS.items():
        value = getattr(args, knob)
        if not isinstance(value, GeneratorDefault):
            thresholds[knob] = value
        elif tiny:
            thresholds[knob] = tiny_value
    summary = segment_everything(
        lambda: make_generator(model, "png", True, **thresholds),
        [sample],
        out / "auto",
        "png",
        overlay=True,
        overwrite=True,
    )
    if summary["failed"]:
        return EXIT_SOME_FAILED
    print(
        f"demo written to {out}/ (open {out}/point/overlay.png, {out}/box/overlay.png and "
        f"{out}/auto/sample.overlay.png)"
    )
    return EXIT_OK
