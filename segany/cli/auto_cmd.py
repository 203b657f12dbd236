"""``segany auto``: automatic masks for an image or a folder, mirroring the official
``scripts/amg.py`` (its flags, its per-image folders of PNG masks with ``metadata.csv``, its
``--convert-to-rle`` JSON) and going beyond it: SA-1B and COCO outputs, overlays, resumable runs
(finished images are skipped; every output is written under a temporary name and renamed),
and unreadable images reported and skipped with a non-zero exit at the end.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io.files import IMAGE_SUFFIXES
from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
    add_backend_arg,
    add_model_args,
    bad_input,
    check_out_dir,
    load_predictor,
    status,
)

FORMATS = ("png", "coco_rle", "sa1b", "coco")
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
COCO_FILE = "annotations.coco.json"

#: (flag, type, help) of the generator knobs, named as in the official script; each flag sets
#: the generator's keyword argument of the same name (dashes as underscores).
KNOBS: list[tuple[str, type, str]] = [
    ("points-per-side", int, "points sampled along one side of the image (grid n x n)"),
    (
        "points-per-batch",
        int,
        "points run through the decoder at once (default: from "
        "free memory; results do not depend on it)",
    ),
    ("pred-iou-thresh", float, "drop masks whose predicted IoU is at most this"),
    ("stability-score-thresh", float, "drop masks whose stability score is below this"),
    ("stability-score-offset", float, "logit offset used for the stability score"),
    ("box-nms-thresh", float, "box IoU above which duplicate masks are removed"),
    ("crop-n-layers", int, "also run on 2**i x 2**i zoomed-in crops for i = 1..N"),
    ("crop-nms-thresh", float, "box IoU for removing duplicates across crops"),
    ("crop-overlap-ratio", float, "overlap of neighbouring crops (fraction of the short side)"),
    (
        "crop-n-points-downscale-factor",
        int,
        "points per side in crop layer i are divided by this**i",
    ),
    ("min-mask-region-area", int, "remove islands and fill holes smaller than this (px)"),
    ("max-masks", int, "keep at most this many masks per image (highest predicted IoU)"),
    ("min-area-fraction", float, "drop masks covering less than this fraction of the image"),
    ("max-area-fraction", float, "drop masks covering at least this fraction (SA-1B used 0.95)"),
]
#: Knobs whose default here is not the generator's: the CLI sizes batches from free memory.
CLI_DEFAULTS: dict[str, Any] = {"points_per_batch": None}


@functools.cache
def generator_defaults() -> dict[str, Any]:
    """The keyword defaults of :class:`segany.amg.SamAutomaticMaskGenerator`, from its
    signature: the one place they are written."""
    from ..amg import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class GeneratorDefault:
    """The argparse default of a knob left to the generator: such a knob is not passed, so the
    generator's own default applies. Printed (``%(default)s`` in help) as that default, read
    only then: importing the generator costs every command about a second (torchvision)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return str(generator_defaults()[self.name])


def make_generator(model: Any, fmt: str, overlay: bool, **knobs: Any) -> Any:
    """A SamAutomaticMaskGenerator on ``model`` (a Sam or an OnnxPredictor) whose records suit
    ``fmt`` (and ``overlay``); knobs not given take the CLI's defaults, else the generator's.
    Invalid knob values are bad usage."""
    from ..amg import SamAutomaticMaskGenerator

    mode = "binary_mask" if fmt == "png" or overlay else "coco_rle"
    with bad_input():
        return SamAutomaticMaskGenerator(model, output_mode=mode, **{**CLI_DEFAULTS, **knobs})


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


def register(sub: Any) -> None:
    """Add ``segany auto`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "auto",
        help="segment everything in an image or a folder (automatic mask generator)",
        description=(
            "Prompt the model with a grid of points, keep confident and stable masks, remove "
            "duplicates (optionally on zoomed-in crops) and write them per image. Re-running "
            "skips images already done; unreadable images are reported and skipped, and the "
            f"exit code is then {EXIT_SOME_FAILED}."
        ),
    )
    p.add_argument("input", nargs="?", help="an image file or a folder of images")
    p.add_argument(
        "--input",
        dest="input_flag",
        metavar="INPUT",
        help="same as the positional INPUT (official amg.py spelling)",
    )
    p.add_argument("--out", "--output", dest="out", required=True, help="output folder (created)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: a folder per image with one PNG per mask and metadata.csv (as amg.py); "
        "coco_rle: NAME.json, the mask records with COCO RLE (as amg.py --convert-to-rle); "
        "sa1b: NAME.json in the SA-1B per-image format; coco: SA-1B files per image plus "
        f"{COCO_FILE} (COCO instances) for the whole input",
    )
    p.add_argument(
        "--convert-to-rle",
        action="store_true",
        help="same as --format coco_rle (official amg.py flag)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write NAME.overlay.png with all masks drawn on the image",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs already exist (default: skip them)",
    )
    p.add_argument(
        "--model-type",
        choices=("vit_b", "vit_l", "vit_h"),
        help="with --checkpoint: official amg.py spelling of --model",
    )
    p.add_argument("--checkpoint", help="checkpoint path (official amg.py spelling of --model)")
    for flag, typ, text in KNOBS:
        default = CLI_DEFAULTS.get(_dest(flag), GeneratorDefault(_dest(flag)))
        p.add_argument(
            f"--{flag}", type=typ, default=default, help=f"{text} (default: %(default)s)"
        )
    add_model_args(p)
    add_backend_arg(p)
    p.set_defaults(func=cmd_auto)


def _targets(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise UsageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    return [path]


def _names(targets: list[Path]) -> list[str]:
    """Output names: the file stem as in amg.py, or the full name where stems collide."""
    stems = [t.stem for t in targets]
    return [t.stem if stems.count(t.stem) == 1 else t.name for t in targets]


def _final_path(out: Path, name: str, fmt: str) -> Path:
    return out / name if fmt == "png" else out / f"{name}.json"


def _write_png_folder(final: Path, records: list[dict]) -> None:
    """amg.py's output: ``{i}.png`` per mask and ``metadata.csv``, replacing ``final`` whole."""
    from ..io.files import atomic_dir, write_text_atomic
    from ..viz import save_mask_png

    with atomic_dir(final) as tmp:
        rows = [METADATA_HEADER]
        for i, r in enumerate(records):
            save_mask_png(tmp / f"{i}.png", r["segmentation"])
            rows.append(
                ",".join(
                    str(v)
                    for v in [
                        i,
                        r["area"],
                        *r["bbox"],
                        *r["point_coords"][0],
                        r["predicted_iou"],
                        r["stability_score"],
                        *r["crop_box"],
                    ]
                )
            )
        write_text_atomic(tmp / "metadata.csv", "\n".join(rows) + "\n")


def segment_everything(
    generator: Callable[[], Any],
    targets: list[Path],
    out: Path,
    fmt: str = "png",
    *,
    overlay: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the automatic mask generator on each image of ``targets`` and write its outputs.

    Args:
        generator: returns the SamAutomaticMaskGenerator (see :func:`make_generator`); called
            once, and only if some image is to be done (so a finished run loads no model).
        targets: image files; outputs are named by stem (full name where stems collide).
        out: output folder (created).
        fmt: one of :data:`FORMATS`.
        overlay: also write ``NAME.overlay.png``.
        overwrite: redo images whose outputs exist (else they are skipped).

    Images that cannot be read are reported on stderr and skipped. Prints the summary as one
    JSON line on stdout and returns it: ``images``, ``done``, ``skipped`` counts and
    ``failed`` (the paths of the unreadable images).
    """
    import numpy as np
    from tqdm import tqdm

    from ..formats import (
        CocoWriter,
        as_coco_rle,
        decode_coco_rle,
        read_sa1b_json,
        write_sa1b_json,
    )
    from ..io.files import write_json_atomic
    from ..io.image import load_image
    from ..viz import overlay_masks, save_image_png

    names = _names(targets)
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        (t, n)
        for t, n in zip(targets, names, strict=True)
        if overwrite or not _final_path(out, n, fmt).exists()
    ]
    skipped = len(targets) - len(todo)
    if skipped:
        status(f"skipping {skipped} image(s) already done (use --overwrite to redo them)")
    failures: list[str] = []
    if todo:
        gen = generator()
        bar = tqdm(todo, desc="segany auto", unit="image", file=sys.stderr, disable=None)
        for target, name in bar:
            bar.set_postfix_str(target.name)
            try:
                image = load_image(target)
            except (ValueError, FileNotFoundError) as e:
                failures.append(str(target))
                print(f"segany: error: {e}; skipping", file=sys.stderr)
                continue
            start = time.perf_counter()
            records = gen.generate(image)
            h, w = image.shape[:2]
            final = _final_path(out, name, fmt)
            if fmt == "png":
                _write_png_folder(final, records)
            else:
                for r in records:
                    r["segmentation"] = as_coco_rle(r["segmentation"], h, w)
                if fmt == "coco_rle":
                    write_json_atomic(final, records)
                else:
                    write_sa1b_json(
                        final,
                        image_id=targets.index(target) + 1,
                        file_name=target.name,
                        width=w,
                        height=h,
                        annotations=records,
                    )
            if overlay:
                masks = [
                    r["segmentation"]
                    if isinstance(r["segmentation"], np.ndarray)
                    else decode_coco_rle(r["segmentation"])
                    for r in records
                ]
                order = np.argsort([-r["area"] for r in records])
                stack = np.stack([masks[i] for i in order]) if masks else np.zeros((0, h, w), bool)
                save_image_png(out / f"{name}.overlay.png", overlay_masks(image, stack))
            status(f"{target.name}: {len(records)} masks in {time.perf_counter() - start:.1f} s")
    if fmt == "coco":
        writer = CocoWriter()
        for name in names:
            path = _final_path(out, name, fmt)
            if path.exists():
                with bad_input():  # a damaged file left in --out
                    rec = read_sa1b_json(path)
                img = rec["image"]
                writer.add_image(
                    img["file_name"], img["width"], img["height"], annotations=rec["annotations"]
                )
        writer.write(out / COCO_FILE)
        status(f"wrote {out / COCO_FILE}")
    summary = {
        "images": len(targets),
        "done": len(todo) - len(failures),
        "skipped": skipped,
        "failed": failures,
    }
    print(json.dumps(summary))
    return summary


def cmd_auto(args: argparse.Namespace) -> int:
    """``segany auto``: exit code 0, or 4 when some images could not be read."""
    source = args.input or args.input_flag
    if not source:
        raise UsageError("give an INPUT image or folder")
    if args.input and args.input_flag and args.input != args.input_flag:
        raise UsageError("give INPUT once (positional or --input)")
    fmt = "coco_rle" if args.convert_to_rle else args.format
    if args.checkpoint:
        args.model = args.checkpoint
    elif args.model_type:
        args.model = args.model_type
    targets = _targets(Path(source))
    out = Path(args.out)
    check_out_dir(out)
    values = {_dest(flag): getattr(args, _dest(flag)) for flag, _, _ in KNOBS}
    knobs = {k: v for k, v in values.items() if not isinstance(v, GeneratorDefault)}

    def generator() -> Any:
        from ..predictor import SamPredictor

        predictor = load_predictor(args)
        model = predictor.model if isinstance(predictor, SamPredictor) else predictor
        return make_generator(model, fmt, args.overlay, **knobs)

    summary = segment_everything(
        generator, targets, out, fmt, overlay=args.overlay, overwrite=args.overwrite
    )
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
