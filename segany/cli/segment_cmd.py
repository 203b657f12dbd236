"""``segany segment IMAGE --point X,Y[,LABEL] ... --box X0,Y0,X1,Y1 ... [--out DIR]``: masks
from point and box prompts, written as PNGs with an overlay and ``scores.json``."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .common import (
    EXIT_OK,
    UsageError,
    add_backend_arg,
    add_model_args,
    attach_text_encoder,
    bad_input,
    check_out_dir,
    encode_image,
    load_predictor,
    make_dir,
    status,
)

#: Output folder of ``segany segment`` when ``--out`` is not given.
DEFAULT_OUT = "segany_out"

_MASK_FILE_RE = re.compile(r"^(box\d+_)?mask_\d+\.png$")

Point = tuple[float, float, int]
Box = tuple[float, float, float, float]


def _numbers(text: str, what: str, example: str, count: Sequence[int]) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in count:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected {example}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid {what} {text!r}: expected {example} (numbers separated by commas)"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: values must be finite")
    return values


def parse_point(text: str) -> Point:
    """``"X,Y"`` or ``"X,Y,LABEL"`` -> ``(x, y, label)``; label 1 (foreground) by default."""
    values = _numbers(text, "point", "X,Y or X,Y,LABEL (e.g. 500,375 or 500,375,0)", (2, 3))
    label = 1
    if len(values) == 3:
        if values[2] not in (0.0, 1.0):
            raise argparse.ArgumentTypeError(
                f"invalid point {text!r}: LABEL must be 1 (foreground) or 0 (background)"
            )
        label = int(values[2])
    return values[0], values[1], label


def parse_box(text: str) -> Box:
    """``"X0,Y0,X1,Y1"`` (XYXY pixels) -> tuple, with ``X1 >= X0`` and ``Y1 >= Y0``."""
    x0, y0, x1, y1 = _numbers(text, "box", "X0,Y0,X1,Y1 (e.g. 75,275,1725,850)", (4,))
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"invalid box {text!r}: expected X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0"
        )
    return x0, y0, x1, y1


def register(sub: Any) -> None:
    """Add ``segany segment`` to the subparsers ``sub``."""
    seg = sub.add_parser(
        "segment",
        help="segment an image from point and box prompts",
        description=(
            "Predict masks for IMAGE from point and/or box prompts. Writes mask_{i}.png "
            "(box{b}_mask_{i}.png with several boxes), overlay.png and scores.json into --out, "
            "and prints one line per mask with its predicted IoU. Coordinates are pixels in "
            "the image, x along the width, origin at the top-left corner."
        ),
    )
    seg.add_argument("image", metavar="IMAGE", help="input image file (any format Pillow reads)")
    seg.add_argument(
        "--point",
        metavar="X,Y[,LABEL]",
        type=parse_point,
        action="append",
        default=[],
        help=(
            "point prompt at pixel (X, Y); LABEL 1 = foreground (default), 0 = background. "
            "Repeat for several points; all points go with every box"
        ),
    )
    seg.add_argument(
        "--box",
        metavar="X0,Y0,X1,Y1",
        type=parse_box,
        action="append",
        default=[],
        help=(
            "box prompt (top-left and bottom-right corners, pixels). Repeat for several "
            "objects: each box is segmented separately"
        ),
    )
    seg.add_argument(
        "--text",
        metavar="PHRASE",
        default=None,
        help=(
            'text prompt naming the object (e.g. "the red star"), alone or with points and '
            "boxes; needs a model with a text path and a text encoder (--text-encoder)"
        ),
    )
    seg.add_argument(
        "--text-encoder",
        metavar="SPEC",
        default=None,
        help=(
            "text encoder for --text: a small-CLIP .safetensors file or open_clip:MODEL[:FILE] "
            "(default: the one shipped with the model, if any)"
        ),
    )
    mm = seg.add_mutually_exclusive_group()
    mm.add_argument(
        "--multimask",
        dest="multimask",
        action="store_const",
        const=True,
        default=None,
        help=(
            "output 3 candidate masks per prompt (default when the only prompt is one point, "
            "which is ambiguous)"
        ),
    )
    mm.add_argument(
        "--single",
        dest="multimask",
        action="store_const",
        const=False,
        help="output one mask per prompt (default with several points or any box)",
    )
    seg.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=(
            f"output folder, created if needed (default: ./{DEFAULT_OUT}); mask PNGs left there "
            "by an earlier run are removed so that the folder matches scores.json"
        ),
    )
    seg.add_argument(
        "--embedding",
        metavar="FILE",
        default=None,
        help=(
            "image-embedding cache (.safetensors): if FILE exists it is used instead of running "
            "the image encoder (it must come from the same image and model), otherwise the "
            "embedding is computed and saved there"
        ),
    )
    add_model_args(seg)
    add_backend_arg(seg)
    seg.set_defaults(func=cmd_segment)


def _num(v: float) -> float | int:
    """JSON-friendly number: integral floats as ints."""
    v = float(v)
    return int(v) if v.is_integer() else v


def _check_in_image(points: list[Point], boxes: list[Box], w: int, h: int) -> None:
    for x, y, label in points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise UsageError(
                f"--point {_num(x)},{_num(y)},{label} lies outside the image ({w}x{h}): "
                f"X must be in [0, {w}] and Y in [0, {h}]"
            )
    for b in boxes:
        x0, y0, x1, y1 = b
        if not (0 <= x0 <= w and 0 <= x1 <= w and 0 <= y0 <= h and 0 <= y1 <= h):
            raise UsageError(
                f"--box {','.join(str(_num(v)) for v in b)} lies outside the image ({w}x{h}): "
                f"X0, X1 must be in [0, {w}] and Y0, Y1 in [0, {h}]"
            )


def _set_image(predictor: Any, image: np.ndarray, image_name: str, embedding: Path | None) -> None:
    """Encode ``image``, or load its embedding from ``embedding`` if that file exists (and save
    it there otherwise)."""
    h, w = image.shape[:2]
    if embedding is not None and embedding.exists():
        status(f"loading embedding {embedding} ...")
        with bad_input():
            predictor.load_embedding(embedding)
        eh, ew = predictor.original_size
        if (eh, ew) != (h, w):
            raise UsageError(
                f"embedding {embedding} was computed for a {ew}x{eh} image but {image_name} is "
                f"{w}x{h}; delete the file or give another --embedding path"
            )
        return
    encode_image(predictor, image)
    if embedding is not None:
        make_dir(embedding.parent, "folder")
        predictor.save_embedding(embedding)
        status(f"saved embedding to {embedding}")


def segment_image(
    predictor: Any,
    image: np.ndarray,
    points: list[Point],
    boxes: list[Box],
    out_dir: Path,
    *,
    multimask: bool | None = None,
    embedding: Path | None = None,
    image_name: str,
    model_name: str,
    text: str | None = None,
) -> None:
    """Predict masks for ``image`` and write them into ``out_dir``.

    Args:
        predictor: a SamPredictor or OnnxPredictor.
        image: ``(H, W, 3)`` uint8 RGB.
        points: ``(x, y, label)`` pixel prompts (XY, label 1 foreground, 0 background), all
            going with every box.
        boxes: ``(x0, y0, x1, y1)`` pixel boxes (XYXY); each is segmented separately.
        out_dir: gets ``mask_{i}.png`` (``box{b}_mask_{i}.png`` with several boxes),
            ``overlay.png`` and ``scores.json``; mask PNGs of an earlier run are removed.
        multimask: 3 masks per prompt; ``None``: when the only prompt is one point or the text.
        text: a text prompt (the predictor needs a text path and a text encoder).
        embedding: embedding file, loaded instead of encoding if it exists, else written.
        image_name, model_name: recorded in ``scores.json``.

    Prints one line per mask (file and predicted IoU) on stdout.
    """
    h, w = image.shape[:2]
    if multimask is None:
        multimask = (len(points) == 1 and not boxes and text is None) or (
            text is not None and not points and not boxes
        )
    _set_image(predictor, image, image_name, embedding)

    coords = np.array([[x, y] for x, y, _ in points], dtype=np.float64) if points else None
    labels = np.array([lab for _, _, lab in points], dtype=np.int64) if points else None
    box_arr = np.array(boxes, dtype=np.float64) if boxes else None
    box_arg = box_arr[0] if box_arr is not None and len(box_arr) == 1 else box_arr
    extra = {} if text is None else {"text": text}
    with bad_input():
        masks, scores, _ = predictor.predict(
            point_coords=coords,
            point_labels=labels,
            box=box_arg,
            multimask_output=multimask,
            **extra,
        )
    per_box = len(boxes) > 1
    if not per_box:  # uniform (sets, C, H, W) / (sets, C)
        masks, scores = masks[None], scores[None]

    from .. import viz
    from ..io.files import write_text_atomic

    make_dir(out_dir, "output folder")
    entries: list[dict[str, Any]] = []
    for b in range(masks.shape[0]):
        for i in range(masks.shape[1]):
            name = f"box{b}_mask_{i}.png" if per_box else f"mask_{i}.png"
            viz.save_mask_png(out_dir / name, masks[b, i])
            entries.append(
                {
                    "file": name,
                    "score": float(scores[b, i]),
                    "box": b if boxes else None,
                    "index": i,
                    "area": int(masks[b, i].sum()),
                }
            )
    written = {e["file"] for e in entries}
    for stale in out_dir.iterdir():
        if _MASK_FILE_RE.match(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()

    shown = masks[np.arange(masks.shape[0]), scores.argmax(axis=1)] if per_box else masks[0]
    overlay = viz.overlay_masks(image, shown, points=coords, labels=labels, boxes=box_arr)
    viz.save_image_png(out_dir / "overlay.png", overlay)

    result = {
        "image": image_name,
        "width": w,
        "height": h,
        "model": model_name,
        "multimask": bool(multimask),
        "points": [[_num(x), _num(y)] for x, y, _ in points],
        "point_labels": [lab for _, _, lab in points],
        "boxes": [[_num(v) for v in b] for b in boxes],
        "text": text,
        "scores": scores.tolist() if per_box else scores[0].tolist(),
        "masks": entries,
        "overlay": "overlay.png",
        "segany_version": __version__,
    }
    write_text_atomic(out_dir / "scores.json", json.dumps(result, indent=2) + "\n")
    for e in entries:
        print(f"{e['file']}\tscore {e['score']:.4f}")
    status(f"wrote {len(entries)} mask(s), overlay.png and scores.json to {out_dir}")


def cmd_segment(args: argparse.Namespace) -> int:
    """``segany segment``: predict masks and write PNGs, an overlay and scores.json."""
    from ..io.image import load_image

    points: list[Point] = args.point
    boxes: list[Box] = args.box
    if not points and not boxes and args.text is None:
        raise UsageError(
            'give at least one prompt: --point X,Y[,LABEL], --box X0,Y0,X1,Y1 or --text "..."'
        )
    if args.text is not None and not args.text.strip():
        raise UsageError("--text needs a phrase naming the object, e.g. --text 'the red star'")
    if args.text is not None and getattr(args, "backend", "torch") != "torch":
        raise UsageError(
            "--text needs --backend torch (the text encoder runs in torch; from Python, "
            "OnnxPredictor.predict(text_embedding=...) takes precomputed embeddings)"
        )
    out_dir = Path(args.out)
    check_out_dir(out_dir)
    embedding = Path(args.embedding) if args.embedding else None
    if embedding is not None and embedding.is_dir():
        raise UsageError(f"--embedding {embedding} is a folder; give a file path")
    with bad_input():
        image = load_image(args.image)
    h, w = image.shape[:2]
    _check_in_image(points, boxes, w, h)
    predictor = load_predictor(args)
    if args.text is not None:
        attach_text_encoder(predictor, args)
    segment_image(
        predictor,
        image,
        points,
        boxes,
        out_dir,
        multimask=args.multimask,
        embedding=embedding,
        image_name=str(args.image),
        model_name=str(args.model),
        text=args.text,
    )
    return EXIT_OK
