"""``segany export-onnx --out DIR``: the model as ONNX files (encoder, decoder) and a manifest,
for ONNX Runtime (``segany segment --backend onnx``, :class:`segany.runtime.OnnxPredictor`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    UsageError,
    check_out_dir,
    load_model,
    make_dir,
    status,
)


def register(sub: Any) -> None:
    """Add ``segany export-onnx`` to the subparsers ``sub``."""
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


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``segany export-onnx``: write the ONNX files and manifest, print the manifest path."""
    from ..export.onnx import MAX_OPSET, MIN_OPSET, export_onnx

    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {args.opset}")
    out = Path(args.out)
    check_out_dir(out)
    if args.no_preprocess and args.no_encoder:
        raise UsageError("--no-preprocess applies to the encoder, which --no-encoder leaves out")
    model = load_model(args)
    start = time.perf_counter()
    name = Path(str(args.model)).stem if Path(str(args.model)).exists() else str(args.model)
    make_dir(out, "--out")
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
        status=status,
    )
    status(f"exported in {time.perf_counter() - start:.1f} s")
    print(manifest)
    return EXIT_OK
