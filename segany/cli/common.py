"""What every ``segany`` command shares: exit codes, error classes, the model arguments, the
status printer and the model / predictor loaders. Imports no command module."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import hub
from ..checkpoint import CheckpointError
from ..precision import PRECISIONS

if TYPE_CHECKING:
    import numpy as np

    from ..modeling import Sam
    from ..predictor import SamPredictor
    from ..runtime.onnx_predictor import OnnxPredictor

#: Model used when ``--model`` is not given (a variant name or a checkpoint path).
DEFAULT_MODEL = "segany_tiny"  # the bundled model (no download)
#: Values of ``--backend``: PyTorch, or ONNX Runtime on a folder written by ``export-onnx``.
BACKENDS = ("torch", "onnx")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_SOME_FAILED = 4  # segany auto: some images could not be read (the others are done)
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error with a user-facing message and an exit code."""

    exit_code = EXIT_ERROR


class UsageError(CliError):
    """Bad usage or bad input (exit code 2)."""

    exit_code = EXIT_USAGE


class ModelUnavailableError(CliError):
    """The requested model cannot be loaded (exit code 3)."""

    exit_code = EXIT_MODEL


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """Around a library call whose ValueError / FileNotFoundError means bad input (an
    unreadable image, invalid prompts, a bad dataset spec or config): re-raise them as
    :class:`UsageError` (exit code 2) with the same message. A :class:`CheckpointError` (a
    ValueError too) stays a model problem (exit code 3)."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e


def status(message: str) -> None:
    """Print a status line (progress, written files) on stderr; results go to stdout."""
    print(message, file=sys.stderr, flush=True)


def check_out_dir(path: Path) -> None:
    """``--out`` may be missing or a folder, not a file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a folder")


def make_dir(path: Path, what: str) -> None:
    """Create the folder ``path`` (and parents); failure is bad usage, reported as ``what``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {what} {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------- arguments


def positive_int(text: str) -> int:
    """argparse type: a positive integer (else a message saying so)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a positive finite number (else a message saying so)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def add_annotations_args(p: argparse.ArgumentParser) -> None:
    """ANNOTATIONS, ``--images``, ``--out``, ``--max-images``, ``--no-progress`` and the model
    options: the dataset arguments of ``segany zeroshot proposals`` and ``instances``."""
    p.add_argument("annotations", metavar="ANNOTATIONS.json", help="COCO or LVIS instances JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of the image files")
    p.add_argument(
        "--out", required=True, metavar="OUT", help="output folder (resumed if it exists)"
    )
    p.add_argument(
        "--max-images", type=positive_int, metavar="N", help="only the first N images (by id)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--precision`` (a group named "model")."""
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
            "compute precision: auto (bf16 where the hardware runs it natively; int8 on CPUs "
            "where it is measured faster and accurate for this model; else fp32), fp32, bf16, "
            "fp16 or int8 (CPU) (default: auto; 'segany info' says what auto picks and why)"
        ),
    )


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    """``--backend {torch,onnx}`` for the commands that run a predictor."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help=(
            "torch (default) or onnx: ONNX Runtime on a folder written by 'segany export-onnx', "
            "given as --model DIR (--device does not apply; --precision int8 uses the int8 "
            "files, auto and fp32 the fp32 ones)"
        ),
    )


class CheckedSamples:
    """A dataset whose samples that cannot be read (image or annotation file) are bad input."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        with bad_input():
            return self.dataset[i]


# ---------------------------------------------------------------------------- models


def load_model(args: argparse.Namespace) -> Sam:
    """Load ``args.model`` on ``args.device`` in ``args.precision``, with status lines. A bad
    device is bad usage (exit code 2); a missing, unreadable or undownloadable checkpoint is
    :class:`ModelUnavailableError` (exit code 3)."""
    import segany
    from segany.precision import model_precision, resolve_device

    with bad_input():  # report a bad --device before loading
        resolve_device(args.device)
    status(f"loading model {args.model} ...")
    start = time.perf_counter()
    try:
        model = segany.load_model(args.model, precision=args.precision, device=args.device)
    except FileNotFoundError as e:
        raise ModelUnavailableError(
            f"{e} (--model takes a checkpoint path or one of {', '.join(hub.CHECKPOINTS)})"
        ) from e
    except (hub.DownloadError, CheckpointError) as e:
        raise ModelUnavailableError(str(e)) from e
    status(
        f"model ready in {time.perf_counter() - start:.1f} s "
        f"({model_precision(model)} on {model.device})"
    )
    return model


def load_onnx_predictor(args: argparse.Namespace) -> OnnxPredictor:
    """An OnnxPredictor on ``--model DIR``; a folder that is not an export (or lacks its files)
    is :class:`ModelUnavailableError` (exit code 3)."""
    from ..runtime.onnx_predictor import OnnxPredictor

    path = Path(str(args.model))
    if not path.is_dir():
        raise ModelUnavailableError(
            f"--backend onnx needs --model DIR, a folder written by 'segany export-onnx' "
            f"(got {args.model!r})"
        )
    precision = getattr(args, "precision", "auto")
    if precision not in ("auto", "fp32", "int8"):
        with bad_input():
            raise ValueError(
                f"--backend onnx runs fp32 or int8 files; --precision {precision} is not one of "
                "auto (fp32), fp32, int8"
            )
    status(f"loading ONNX model {path} ...")
    start = time.perf_counter()
    try:
        predictor = OnnxPredictor(path, quantized=precision == "int8")
    except (FileNotFoundError, ValueError) as e:
        raise ModelUnavailableError(str(e)) from e
    except Exception as e:  # onnxruntime refusing a file: corrupt or foreign model
        raise ModelUnavailableError(f"cannot load the ONNX model in {path}: {e}") from e
    status(
        f"ONNX model ready in {time.perf_counter() - start:.1f} s "
        f"({predictor.precision}, onnxruntime, CPU)"
    )
    return predictor


def load_predictor(args: argparse.Namespace) -> SamPredictor | OnnxPredictor:
    """The predictor on ``--model`` for ``--backend`` (torch when the command has none)."""
    if getattr(args, "backend", "torch") == "onnx":
        return load_onnx_predictor(args)
    from ..predictor import SamPredictor

    return SamPredictor(load_model(args))


def encode_image(predictor: Any, image: np.ndarray) -> None:
    """``predictor.set_image(image)`` (``(H, W, 3)`` uint8 RGB) with status lines."""
    h, w = image.shape[:2]
    status(f"encoding image ({w}x{h}) ...")
    start = time.perf_counter()
    predictor.set_image(image)
    status(f"encoded in {time.perf_counter() - start:.1f} s")


def attach_text_encoder(predictor: Any, args: argparse.Namespace) -> None:
    """Check that ``--model`` has a text path and give the predictor ``--text-encoder``."""
    if not predictor.model.prompt_encoder.has_text:
        raise UsageError(
            f"the model {args.model} has no text path, so it cannot take --text; use a model "
            "trained with text prompts (segany train with text_prompts = true)"
        )
    if args.text_encoder:
        from ..text import load_text_encoder

        with bad_input():
            predictor.text_encoder = load_text_encoder(args.text_encoder)
    if predictor.text_encoder is None:
        raise UsageError(
            f"the model {args.model} ships no text encoder: give --text-encoder FILE (the "
            "small-CLIP file or open_clip:MODEL[:FILE] it was trained with)"
        )
