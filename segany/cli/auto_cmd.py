"""``segany auto``: automatic masks for an image or a folder, mirroring the official
``scripts/amg.py`` (its flags, its per-image folders of PNG masks with ``metadata.csv``, its
``--convert-to-rle`` JSON) and going beyond it: SA-1B and COCO outputs, overlays, resumable runs
(finished images are skipped; every output is written under a temporary name and renamed),
and unreadable images reported and skipped with a non-zero exit at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}
FORMATS = ("png", "coco_rle", "sa1b", "coco")
EXIT_SOME_FAILED = 4
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
COCO_FILE = "annotations.coco.json"

# (flag, type, default, help) of the generator knobs, named as in the official script
KNOBS: list[tuple[str, type, Any, str]] = [
    ("points-per-side", int, 32, "points sampled along one side of the image (grid n x n)"),
    (
        "points-per-batch",
        int,
        None,
        "points run through the decoder at once (default: from "
        "free memory; results do not depend on it)",
    ),
    ("pred-iou-thresh", float, 0.88, "drop masks whose predicted IoU is at most this"),
    ("stability-score-thresh", float, 0.95, "drop masks whose stability score is below this"),
    ("stability-score-offset", float, 1.0, "logit offset used for the stability score"),
    ("box-nms-thresh", float, 0.7, "box IoU above which duplicate masks are removed"),
    ("crop-n-layers", int, 0, "also run on 2**i x 2**i zoomed-in crops for i = 1..N"),
    ("crop-nms-thresh", float, 0.7, "box IoU for removing duplicates across crops"),
    (
        "crop-overlap-ratio",
        float,
        512 / 1500,
        "overlap of neighbouring crops (fraction of the short side)",
    ),
    (
        "crop-n-points-downscale-factor",
        int,
        1,
        "points per side in crop layer i are divided by this**i",
    ),
    ("min-mask-region-area", int, 0, "remove islands and fill holes smaller than this (px)"),
    ("max-masks", int, None, "keep at most this many masks per image (highest predicted IoU)"),
    ("min-area-fraction", float, 0.0, "drop masks covering less than this fraction of the image"),
    (
        "max-area-fraction",
        float,
        1.0,
        "drop masks covering at least this fraction (SA-1B used 0.95)",
    ),
]


def add_auto_parser(sub: Any, add_model_args: Any) -> argparse.ArgumentParser:
    """Register ``segany auto`` on an argparse subparsers object."""
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
    for flag, typ, default, text in KNOBS:
        p.add_argument(f"--{flag}", type=typ, default=default, help=f"{text} (default: {default})")
    add_model_args(p)
    from .export_cmd import add_backend_arg

    add_backend_arg(p)
    return p


def _targets(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return [path]


def _names(targets: list[Path]) -> list[str]:
    """Output names: the file stem as in amg.py, or the full name where stems collide."""
    stems = [t.stem for t in targets]
    return [t.stem if stems.count(t.stem) == 1 else t.name for t in targets]


def _final_path(out: Path, name: str, fmt: str) -> Path:
    return out / name if fmt == "png" else out / f"{name}.json"


def _write_png_folder(final: Path, records: list[dict]) -> None:
    from ..viz import save_mask_png

    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    (tmp / "metadata.csv").write_text("\n".join(rows) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def cmd_auto(args: argparse.Namespace, load_model: Any, status: Any) -> int:
    """Run ``segany auto``; returns the exit code."""
    import numpy as np
    from tqdm import tqdm

    from ..amg import SamAutomaticMaskGenerator
    from ..formats import CocoWriter, read_sa1b_json, write_json_atomic, write_sa1b_json
    from ..io.image import load_image
    from ..viz import overlay_masks, save_image_png

    source = args.input or args.input_flag
    if not source:
        raise ValueError("give an INPUT image or folder")
    if args.input and args.input_flag and args.input != args.input_flag:
        raise ValueError("give INPUT once (positional or --input)")
    fmt = "coco_rle" if args.convert_to_rle else args.format
    if args.checkpoint:
        args.model = args.checkpoint
    elif args.model_type:
        args.model = args.model_type
    targets = _targets(Path(source))
    names = _names(targets)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    todo = [
        (t, n)
        for t, n in zip(targets, names, strict=True)
        if args.overwrite or not _final_path(out, n, "png" if fmt == "png" else "json").exists()
    ]
    skipped = len(targets) - len(todo)
    if skipped:
        status(f"skipping {skipped} image(s) already done (use --overwrite to redo them)")
    failures: list[str] = []
    if todo:
        if getattr(args, "backend", "torch") == "onnx":
            from .export_cmd import load_onnx_predictor

            model = load_onnx_predictor(args)
        else:
            model = load_model(args)
        generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            stability_score_offset=args.stability_score_offset,
            box_nms_thresh=args.box_nms_thresh,
            crop_n_layers=args.crop_n_layers,
            crop_nms_thresh=args.crop_nms_thresh,
            crop_overlap_ratio=args.crop_overlap_ratio,
            crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
            min_mask_region_area=args.min_mask_region_area,
            output_mode="binary_mask" if fmt == "png" or args.overlay else "coco_rle",
            max_masks=args.max_masks,
            min_area_fraction=args.min_area_fraction,
            max_area_fraction=args.max_area_fraction,
        )
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
            records = generator.generate(image)
            h, w = image.shape[:2]
            final = _final_path(out, name, "png" if fmt == "png" else "json")
            if fmt == "png":
                _write_png_folder(final, records)
            else:
                from ..formats import as_coco_rle

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
            if args.overlay:
                from ..formats import decode_coco_rle

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
            path = _final_path(out, name, "json")
            if path.exists():
                rec = read_sa1b_json(path)
                img = rec["image"]
                writer.add_image(
                    img["file_name"], img["width"], img["height"], annotations=rec["annotations"]
                )
        writer.write(out / COCO_FILE)
        status(f"wrote {out / COCO_FILE}")
    print(
        json.dumps(
            {
                "images": len(targets),
                "done": len(todo) - len(failures),
                "skipped": skipped,
                "failed": failures,
            }
        )
    )
    return EXIT_SOME_FAILED if failures else 0
