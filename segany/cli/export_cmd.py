"""``segany export-onnx`` and the ONNX Runtime backend of ``segany segment``.

Registered by :mod:`segany.cli.main` (``add_export_parser``, ``add_backend_arg``); exit codes and
error reporting are main's: 0 success, 2 bad usage or input, 3 model not available.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnx")


def add_export_parser(sub: Any) -> None:
    """Register the ``export-onnx`` subcommand on main's subparsers."""
    from .main import DEFAULT_MODEL

    p = sub.add_parser(
        "export-onnx",
        help="export the model to ONNX (encoder, decoder, manifest)",
        description=(
            "Write decoder.onnx (the official SAM decoder interface: the web demo and "
            "annotation tools use it unchanged), encoder.onnx (raw uint8 pixels in, embedding "
            "out; resizing, normalization and padding inside the graph) and manifest.json into "
            "--out. Run them with segany.runtime.OnnxPredictor or 'segany segment --backend "
            "onnx --model DIR'."
        ),
    )
    p.add_argument(
        "--model",
        metavar="M",
        default=DEFAULT_MODEL,
        help=(
            "checkpoint path (official format, architecture inferred), segany_tiny (bundled) "
            f"or an official variant vit_b|vit_l|vit_h (default: {DEFAULT_MODEL})"
        ),
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created if needed)")
    p.add_argument(
        "--opset",
        metavar="N",
        type=int,
        default=17,
        help="ONNX opset, 14..20 (default: 17, as the official export)",
    )
    p.add_argument(
        "--quantize",
        action="store_true",
        help=(
            "also write dynamic-int8 encoder.int8.onnx / decoder.int8.onnx and "
            "quantization_report.json (int8 vs fp32 on generated images)"
        ),
    )
    p.add_argument(
        "--return-single-mask",
        action="store_true",
        help="decoder returns only the best mask (official return_single_mask logic)",
    )
    p.add_argument(
        "--gelu-approximate",
        action="store_true",
        help="tanh approximation of GELU, for runtimes without the Erf op",
    )
    p.add_argument("--no-encoder", action="store_true", help="export only the decoder")
    p.add_argument(
        "--no-preprocess",
        action="store_true",
        help=(
            "encoder takes the normalized, padded (1, 3, S, S) float tensor instead of raw "
            "uint8 (H, W, 3) pixels"
        ),
    )
    p.set_defaults(func=cmd_export_onnx, device="cpu", precision="fp32")


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    """``--backend {torch,onnx}`` for ``segany segment`` and ``segany auto``."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help=(
            "torch (default) or onnx: ONNX Runtime on a folder written by 'segany export-onnx', "
            "given as --model DIR (--device/--precision do not apply)"
        ),
    )


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``segany export-onnx``: write the ONNX files and manifest, print the manifest path."""
    from ..export.onnx import MAX_OPSET, MIN_OPSET, export_onnx
    from .main import EXIT_OK, UsageError, _load_model, _status

    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {args.opset}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if args.no_preprocess and args.no_encoder:
        raise UsageError("--no-preprocess applies to the encoder, which --no-encoder leaves out")
    model = _load_model(args)
    start = time.perf_counter()
    name = Path(str(args.model)).stem if Path(str(args.model)).exists() else str(args.model)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    manifest = export_onnx(
        model,
        out,
        opset=args.opset,
        quantize=args.quantize,
        return_single_mask=args.return_single_mask,
        gelu_approximate=args.gelu_approximate,
        encoder=not args.no_encoder,
        encoder_preprocess=not args.no_preprocess,
        name=name,
        status=_status,
    )
    _status(f"exported in {time.perf_counter() - start:.1f} s")
    print(manifest)
    return EXIT_OK


def load_onnx_predictor(args: argparse.Namespace) -> Any:
    """``--backend onnx``: an OnnxPredictor on ``--model DIR``; a folder that is not an
    export (or lacks its files) is 'model not available' (exit code 3)."""
    from ..runtime.onnx_predictor import OnnxPredictor
    from .main import ModelUnavailableError, _status

    path = Path(str(args.model))
    if not path.is_dir():
        raise ModelUnavailableError(
            f"--backend onnx needs --model DIR, a folder written by 'segany export-onnx' "
            f"(got {args.model!r})"
        )
    _status(f"loading ONNX model {path} ...")
    start = time.perf_counter()
    try:
        predictor = OnnxPredictor(path)
    except (FileNotFoundError, ValueError) as e:
        raise ModelUnavailableError(str(e)) from e
    except Exception as e:  # onnxruntime refusing a file: corrupt or foreign model
        raise ModelUnavailableError(f"cannot load the ONNX model in {path}: {e}") from e
    _status(f"ONNX model ready in {time.perf_counter() - start:.1f} s (onnxruntime, CPU)")
    return predictor
