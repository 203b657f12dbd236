"""The ``segany`` command line.

Subcommands::

    segany segment IMAGE --point X,Y[,LABEL] ... --box X0,Y0,X1,Y1 ... [--out DIR]
    segany embed IMAGE --out FILE.safetensors
    segany download VARIANT [--root DIR]
    segany info
    segany eval DATA [--clicks 1,2,3,5,9] [--out DIR]
    segany train CONFIG [--set KEY=VALUE ...] [--out-dir DIR] [--restart]

Exit codes (stable, for scripts):

====  ==========================================================================
0     success
1     unexpected error (a bug, or an environment problem such as a full disk)
2     bad usage or bad input: argparse errors, invalid prompts, unreadable or
      missing image / embedding file, invalid device
3     model not available: checkpoint missing, unreadable or not a SAM model,
      official checkpoint could not be downloaded
130   interrupted (Ctrl-C)
====  ==========================================================================

Errors are printed as ``segany: error: <message>`` on stderr, without a traceback unless the
environment variable ``SEGANY_DEBUG=1`` is set. Status lines (model loading, encoding) go to
stderr; results (one line per mask, written paths) go to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__, hub
from ..checkpoint import CheckpointError
from ..precision import PRECISIONS
from . import export_cmd

#: Model used when ``--model`` is not given (a variant name or a checkpoint path).
DEFAULT_MODEL = "segany_tiny"  # the bundled model (no download)
# The demo's automatic-generator filters (predicted IoU, stability) for the bundled model: it is
# small and its IoU scores and logit margins are lower than SAM's; on the demo's sample image the
# official 0.88 / 0.95 keep the 3 objects but drop the nested part, 0.7 / 0.9 keep it (6 masks).
DEMO_TINY_THRESHOLDS = (0.7, 0.9)
#: Output folder of ``segany segment`` when ``--out`` is not given.
DEFAULT_OUT = "segany_out"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130

_MASK_FILE_RE = re.compile(r"^(box\d+_)?mask_\d+\.png$")

Point = tuple[float, float, int]
Box = tuple[float, float, float, float]


class CliError(Exception):
    """An error with a user-facing message and an exit code."""

    exit_code = EXIT_ERROR


class UsageError(CliError):
    """Bad usage or bad input (exit code 2)."""

    exit_code = EXIT_USAGE


class ModelUnavailableError(CliError):
    """The requested model cannot be loaded (exit code 3)."""

    exit_code = EXIT_MODEL


# ---------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors read ``segany: error: ...`` and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"segany: error: {message}\n")


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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="M",
        default=DEFAULT_MODEL,
        help=(
            "checkpoint path (.pth or .safetensors, official format; architecture inferred), "
            "segany_tiny (the bundled model) or an official variant vit_b|vit_l|vit_h, "
            f"downloaded once into the cache (default: {DEFAULT_MODEL})"
        ),
    )
    g.add_argument(
        "--device",
        metavar="D",
        default=None,
        help="torch device: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--precision",
        metavar="P",
        choices=PRECISIONS,
        default="auto",
        help=(
            "compute precision: auto (bf16 where the hardware runs it natively, else fp32), "
            "fp32, bf16 or fp16 (default: auto; see 'segany info')"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``segany`` argument parser (with its subcommand parsers)."""
    parser = _Parser(
        prog="segany",
        description="Segment Anything (SAM): segment objects in images from points and boxes.",
        epilog=(
            "exit codes: 0 success, 1 unexpected error, 2 bad usage or input, "
            "3 model not available. Set SEGANY_DEBUG=1 for tracebacks."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"segany {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        title="commands",
        help="run 'segany COMMAND --help' for its options",
    )

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
    _add_model_args(seg)
    export_cmd.add_backend_arg(seg)
    seg.set_defaults(func=cmd_segment)

    emb = sub.add_parser(
        "embed",
        help="encode an image once and save its embedding",
        description=(
            "Run the image encoder on IMAGE and save the embedding, to prompt the image later "
            "with 'segany segment IMAGE --embedding FILE' without re-encoding."
        ),
    )
    emb.add_argument("image", metavar="IMAGE", help="input image file (any format Pillow reads)")
    emb.add_argument(
        "--out",
        metavar="FILE",
        required=True,
        help="where to write the embedding (safetensors; folders are created)",
    )
    _add_model_args(emb)
    emb.set_defaults(func=cmd_embed)

    dl = sub.add_parser(
        "download",
        help="download an official SAM checkpoint into the cache",
        description=(
            "Download (or resume, or verify) an official SAM checkpoint and print its path. "
            "Without --root the cache is $SEGANY_HOME, else ~/.cache/segany."
        ),
    )
    dl.add_argument(
        "variant",
        metavar="VARIANT",
        choices=list(hub.CHECKPOINTS),
        help=f"which checkpoint: {', '.join(hub.CHECKPOINTS)}",
    )
    dl.add_argument(
        "--root",
        metavar="DIR",
        default=None,
        help="download into DIR instead of the cache folder",
    )
    dl.set_defaults(func=cmd_download)

    info = sub.add_parser(
        "info",
        help="show versions, device, precision and cached checkpoints",
        description=(
            "Print the segany and torch versions, the default device, what --precision auto "
            "resolves to and why, the checkpoint cache folder and which official checkpoints "
            "it holds."
        ),
    )
    info.set_defaults(func=cmd_info)

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
        default=None,
        help=(
            "automatic generator's predicted-IoU filter (default: 0.88, the official value; "
            f"{DEMO_TINY_THRESHOLDS[0]} for the bundled segany_tiny, whose IoU head scores lower)"
        ),
    )
    demo.add_argument(
        "--stability-score-thresh",
        type=float,
        default=None,
        help=(
            "automatic generator's stability filter (default: 0.95, the official value; "
            f"{DEMO_TINY_THRESHOLDS[1]} for the bundled segany_tiny)"
        ),
    )
    _add_model_args(demo)
    demo.set_defaults(func=cmd_demo)

    from .auto_cmd import add_auto_parser, cmd_auto

    auto = add_auto_parser(sub, _add_model_args)
    auto.set_defaults(func=lambda a: cmd_auto(a, _load_model, _status))
    from .eval_cmd import add_eval_parser, cmd_eval

    add_eval_parser(sub, _add_model_args).set_defaults(
        func=lambda a: cmd_eval(a, _load_model, _status)
    )
    export_cmd.add_export_parser(sub)
    from .train_cmd import add_train_parser, cmd_train

    add_train_parser(sub).set_defaults(func=cmd_train)
    return parser


# ---------------------------------------------------------------------------- helpers


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _num(v: float) -> float | int:
    """JSON-friendly number: integral floats as ints."""
    v = float(v)
    return int(v) if v.is_integer() else v


def _load_model(args: argparse.Namespace) -> Any:
    """Load ``--model`` as asked; model-availability problems become exit code 3."""
    import segany
    from segany.precision import precision_name, resolve_device

    preloaded = getattr(args, "preloaded_model", None)
    if preloaded is not None:
        return preloaded
    resolve_device(args.device)  # a bad --device is bad usage (2), report it before loading
    _status(f"loading model {args.model} ...")
    start = time.perf_counter()
    try:
        model = segany.load_model(args.model, precision=args.precision, device=args.device)
    except FileNotFoundError as e:
        raise ModelUnavailableError(
            f"{e} (--model takes a checkpoint path or one of {', '.join(hub.CHECKPOINTS)})"
        ) from e
    except (hub.DownloadError, CheckpointError) as e:
        raise ModelUnavailableError(str(e)) from e
    _status(
        f"model ready in {time.perf_counter() - start:.1f} s "
        f"({precision_name(model.dtype)} on {model.device})"
    )
    return model


def _encode(predictor: Any, image: Any) -> None:
    h, w = image.shape[:2]
    _status(f"encoding image ({w}x{h}) ...")
    start = time.perf_counter()
    predictor.set_image(image)
    _status(f"encoded in {time.perf_counter() - start:.1f} s")


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


def _prepare_out_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a folder")


def _mkdir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {what} {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------- commands


def cmd_segment(args: argparse.Namespace) -> int:
    """``segany segment``: predict masks and write PNGs, an overlay and scores.json."""
    import numpy as np

    import segany
    from segany import viz
    from segany.io.image import load_image

    points: list[Point] = args.point
    boxes: list[Box] = args.box
    if not points and not boxes:
        raise UsageError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    out_dir = Path(args.out)
    _prepare_out_dir(out_dir)
    emb_path = Path(args.embedding) if args.embedding else None
    if emb_path is not None and emb_path.is_dir():
        raise UsageError(f"--embedding {emb_path} is a folder; give a file path")

    image = load_image(args.image)
    h, w = image.shape[:2]
    _check_in_image(points, boxes, w, h)
    multimask = args.multimask if args.multimask is not None else (len(points) == 1 and not boxes)

    if getattr(args, "backend", "torch") == "onnx":
        predictor = export_cmd.load_onnx_predictor(args)
    else:
        predictor = segany.SamPredictor(_load_model(args))
    if emb_path is not None and emb_path.exists():
        _status(f"loading embedding {emb_path} ...")
        predictor.load_embedding(emb_path)
        eh, ew = predictor.original_size
        if (eh, ew) != (h, w):
            raise UsageError(
                f"embedding {emb_path} was computed for a {ew}x{eh} image but {args.image} is "
                f"{w}x{h}; delete the file or give another --embedding path"
            )
    else:
        _encode(predictor, image)
        if emb_path is not None:
            _mkdir(emb_path.parent, "folder")
            predictor.save_embedding(emb_path)
            _status(f"saved embedding to {emb_path}")

    coords = np.array([[x, y] for x, y, _ in points], dtype=np.float64) if points else None
    labels = np.array([lab for _, _, lab in points], dtype=np.int64) if points else None
    box_arr = np.array(boxes, dtype=np.float64) if boxes else None
    box_arg = box_arr[0] if box_arr is not None and len(box_arr) == 1 else box_arr
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=labels, box=box_arg, multimask_output=multimask
    )
    per_box = len(boxes) > 1
    if not per_box:  # uniform (sets, C, H, W) / (sets, C)
        masks, scores = masks[None], scores[None]

    _mkdir(out_dir, "output folder")
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

    if per_box:
        best = scores.argmax(axis=1)
        shown = masks[np.arange(masks.shape[0]), best]
    else:
        shown = masks[0]
    overlay = viz.overlay_masks(
        image,
        shown,
        points=None if coords is None else coords,
        labels=labels,
        boxes=box_arr,
    )
    viz.save_image_png(out_dir / "overlay.png", overlay)

    result = {
        "image": str(args.image),
        "width": w,
        "height": h,
        "model": str(args.model),
        "multimask": bool(multimask),
        "points": [[_num(x), _num(y)] for x, y, _ in points],
        "point_labels": [lab for _, _, lab in points],
        "boxes": [[_num(v) for v in b] for b in boxes],
        "scores": scores.tolist() if per_box else scores[0].tolist(),
        "masks": entries,
        "overlay": "overlay.png",
        "segany_version": __version__,
    }
    viz.write_bytes_atomic(
        out_dir / "scores.json", (json.dumps(result, indent=2) + "\n").encode("utf-8")
    )
    for e in entries:
        print(f"{e['file']}\tscore {e['score']:.4f}")
    _status(f"wrote {len(entries)} mask(s), overlay.png and scores.json to {out_dir}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``segany demo``: sample image, then a point prompt and a box prompt."""
    from segany import viz
    from segany.data.sample import sample_image

    out = Path(args.out)
    _mkdir(out, "--out")
    image, objects = sample_image()
    sample = out / "sample.png"
    viz.save_image_png(sample, image)
    _status(f"wrote {sample}")
    disc, panel = objects[0], objects[2]
    embedding = out / "sample.embedding.safetensors"
    embedding.unlink(missing_ok=True)  # may come from another model
    model = _load_model(args)
    runs = [
        ("point", disc, [(*disc.point, 1)], [], True),
        ("box", panel, [], [panel.box], False),
    ]
    for name, obj, points, boxes, multimask in runs:
        _status(f"--- {name} prompt on the {obj.name}")
        seg_args = argparse.Namespace(
            **{
                **vars(args),
                "image": str(sample),
                "point": points,
                "box": boxes,
                "multimask": multimask,
                "out": str(out / name),
                "embedding": str(embedding),
                "preloaded_model": model,
            }
        )
        code = cmd_segment(seg_args)
        if code:
            return code
    from .auto_cmd import cmd_auto

    _status("--- automatic masks (segment everything)")
    tiny = str(args.model) == DEFAULT_MODEL
    iou_t = args.pred_iou_thresh
    stab_t = args.stability_score_thresh
    if iou_t is None:
        iou_t = DEMO_TINY_THRESHOLDS[0] if tiny else 0.88
    if stab_t is None:
        stab_t = DEMO_TINY_THRESHOLDS[1] if tiny else 0.95
    auto_args = build_parser().parse_args(
        [
            "auto",
            str(sample),
            "--out",
            str(out / "auto"),
            "--overlay",
            "--overwrite",
            "--pred-iou-thresh",
            str(iou_t),
            "--stability-score-thresh",
            str(stab_t),
            "--model",
            str(args.model),
            "--precision",
            args.precision,
        ]
        + (["--device", args.device] if args.device else [])
    )
    auto_args.preloaded_model = model
    code = cmd_auto(auto_args, _load_model, _status)
    if code:
        return code
    print(
        f"demo written to {out}/ (open {out}/point/overlay.png, {out}/box/overlay.png and "
        f"{out}/auto/sample.overlay.png)"
    )
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    """``segany embed``: encode an image and save the embedding."""
    import segany
    from segany.io.image import load_image

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(
            f"--out {out} is a folder; give a file path such as {out / 'image.safetensors'}"
        )
    image = load_image(args.image)
    model = _load_model(args)
    predictor = segany.SamPredictor(model)
    _encode(predictor, image)
    _mkdir(out.parent, "folder")
    predictor.save_embedding(out)
    print(out)
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    """``segany download``: fetch an official checkpoint into the cache, print its path."""
    root = Path(args.root).expanduser() if args.root else None
    dest = hub.checkpoint_path(args.variant, root=root)
    _status(f"fetching the {args.variant} checkpoint into {dest.parent} ...")
    try:
        path = hub.download_checkpoint(args.variant, root=root)
    except hub.DownloadError as e:
        raise ModelUnavailableError(str(e)) from e
    print(path)
    return EXIT_OK


def _describe_checkpoint(info: hub.CheckpointInfo, root: Path) -> str:
    path = root / info.filename
    part = path.with_name(path.name + ".part")
    try:
        if path.is_file():
            size = path.stat().st_size
            if size == info.num_bytes:
                return f"present ({size:,} bytes; sha256 checked on use)"
            return (
                f"incomplete or corrupt ({size:,} of {info.num_bytes:,} bytes): delete it and run "
                f"'segany download {info.variant}'"
            )
        if part.is_file():
            return (
                f"partial download ({part.stat().st_size:,} of {info.num_bytes:,} bytes): "
                f"'segany download {info.variant}' resumes it"
            )
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return f"not downloaded ('segany download {info.variant}')"


def cmd_info(args: argparse.Namespace) -> int:
    """``segany info``: versions, device, precision, cache."""
    import platform

    import torch

    from segany.precision import (
        cpu_has_native_bf16,
        precision_name,
        resolve_device,
        resolve_precision,
    )

    cuda = torch.cuda.is_available()
    device = resolve_device(None)
    auto = precision_name(resolve_precision("auto", device))
    cpu_bf16 = cpu_has_native_bf16()
    if device.type == "cuda":
        try:
            gpu = torch.cuda.get_device_name(device)
        except Exception:  # pragma: no cover - driver oddities
            gpu = "the GPU"
        why = f"{gpu} {'supports' if auto == 'bf16' else 'does not support'} bf16"
    else:
        why = (
            "this CPU runs bf16 natively: AVX512-BF16 or AMX"
            if cpu_bf16
            else "this CPU has no native bf16 (no AVX512-BF16 or AMX): fp32 is faster"
        )
    root = hub.cache_dir()
    source = (
        "from SEGANY_HOME" if os.environ.get("SEGANY_HOME") else "default; SEGANY_HOME overrides"
    )
    exists = "" if root.is_dir() else ", does not exist yet"
    lines = [
        f"segany {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA available: {'yes' if cuda else 'no'}",
        f"default device: {device} (torch CPU threads: {torch.get_num_threads()})",
        f"precision auto: {auto} on {device} ({why})",
        f"CPU native bf16: {'yes' if cpu_bf16 else 'no'}",
        f"cache dir: {root} ({source}{exists})",
        f"default --model: {DEFAULT_MODEL}",
        "official checkpoints:",
    ]
    for variant, info in hub.CHECKPOINTS.items():
        lines.append(f"  {variant}  {info.filename}  {_describe_checkpoint(info, root)}")
    print("\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------------------- entry point


def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and message for an exception escaping a command."""
    if isinstance(exc, CliError):
        return exc.exit_code, str(exc)
    if isinstance(exc, (hub.DownloadError, CheckpointError)):
        return EXIT_MODEL, str(exc)
    if isinstance(exc, (FileNotFoundError, ValueError)):
        return EXIT_USAGE, str(exc)
    text = str(exc)
    return EXIT_ERROR, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _debug() -> bool:
    return os.environ.get("SEGANY_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the ``segany`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit code (see the module docstring) instead of exiting, so that it can be
    called in-process; the console script passes it to ``sys.exit``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        if e.code is None:
            return EXIT_OK
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        print("segany: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("segany: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, message = _classify(exc)
        if _debug():
            traceback.print_exc()
        elif code == EXIT_ERROR:
            message += " (set SEGANY_DEBUG=1 to see the traceback)"
        print(f"segany: error: {message}", file=sys.stderr)
        return code
