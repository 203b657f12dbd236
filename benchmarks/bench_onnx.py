"""ONNX Runtime vs segany's PyTorch path on CPU: image encoder and decoder, fp32 and int8.

``--model vit_b`` (default: vit_b with random weights, seeded) or ``--model segany_tiny`` (the
bundled model) is exported with ``segany.export.export_onnx(..., quantize=True)`` (which also
writes the int8-vs-fp32 accuracy report) and once more with ``return_single_mask=True`` (the
official web demo's decoder), then each configuration runs in its own process on the same
generated 1024x768 image:

* encoder: ``set_image`` wall time, median of ``--repeats`` after one warm-up run (raw uint8
  pixels in; resizing, normalization and padding included in both backends);
* decoder: ``predict`` with one point, 3 masks upscaled to 1024x768 and returned as numpy
  (median of 30 after 5 warm-up calls); and the same for one mask (``multimask_output=False``
  in PyTorch; the ``return_single_mask`` export in ONNX Runtime, which upscales only that one);
* peak resident memory of the process (weights and sessions included).

Run: ``python benchmarks/bench_onnx.py [--model segany_tiny]`` (a few minutes on 2 cores). Prints a Markdown table
and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, add_worker_arguments, rss_kb, run_worker, send_result, write_results
from common import machine as core_machine


def _decoder_ms(predictor, point, labels, multimask: bool) -> tuple[float, np.ndarray]:
    """Median ``predict`` time in ms over 30 calls after 5 warm-up calls, and the last masks."""
    for _ in range(5):
        predictor.predict(point_coords=point, point_labels=labels, multimask_output=multimask)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        masks, _, _ = predictor.predict(
            point_coords=point, point_labels=labels, multimask_output=multimask
        )
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000), masks


def worker(args: argparse.Namespace) -> dict:
    from segany.data.sample import sample_image

    image, objects = sample_image(1024, 768)
    point = np.array([objects[0].point])
    if args.backend == "torch":
        import torch

        import segany
        from segany.precision import precision_name

        torch.manual_seed(0)
        if args.model == "vit_b":
            model = segany.build_sam("vit_b", args.weights, precision=args.precision, device="cpu")
        else:
            model = segany.load_model(args.model, precision=args.precision, device="cpu")
        predictor = segany.SamPredictor(model)
        single = predictor
        precision = precision_name(model.dtype)
    else:
        from segany.runtime import OnnxPredictor

        predictor = OnnxPredictor(args.export, quantized=args.precision == "int8")
        single = OnnxPredictor(args.export_single, quantized=args.precision == "int8")
        precision = args.precision
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - t)
    labels = np.array([1])
    predict_ms, masks = _decoder_ms(predictor, point, labels, multimask=True)
    assert masks.shape == (3, 768, 1024)
    if single is not predictor:  # the single-mask export is decoder-only: reuse the embedding
        single.set_embedding(predictor.get_image_embedding(), image.shape[:2])
    predict_single_ms, masks = _decoder_ms(single, point, labels, multimask=False)
    assert masks.shape == (1, 768, 1024)
    return {
        "backend": args.backend,
        "precision": precision,
        "set_image_s": float(np.median(times[1:])),
        "set_image_first_s": times[0],
        "predict_ms": predict_ms,
        "predict_single_ms": predict_single_ms,
        "peak_rss_mb": rss_kb("VmHWM") / 1024,
    }


def random_weights(path: Path) -> None:
    """vit_b with every parameter random (the default init leaves some at zero)."""
    import torch

    import segany

    torch.manual_seed(0)
    model = segany.build_sam_model(segany.get_config("vit_b"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    torch.save(model.state_dict(), path)


def fp32_model(model: str, tmp: Path) -> tuple[Any, str]:
    """The model to benchmark, fp32 on the CPU, and its name: ``vit_b`` means vit_b-sized
    random weights (:func:`random_weights`, written into ``tmp``), anything else is loaded."""
    import segany

    if model == "vit_b":
        weights = tmp / "random_vit_b.pth"
        random_weights(weights)
        return segany.build_sam("vit_b", weights, precision="fp32", device="cpu"), "vit_b_random"
    return segany.load_model(model, precision="fp32", device="cpu"), model


def machine() -> dict:
    import onnxruntime

    return {**core_machine(), "onnxruntime": onnxruntime.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="timed set_image runs per configuration")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--model",
        choices=("vit_b", "segany_tiny"),
        default="vit_b",
        help="vit_b with random weights (default) or the bundled segany_tiny",
    )
    hidden = {"weights": None, "export": None, "export_single": None}
    add_worker_arguments(p, backend="onnx", precision="fp32", **hidden)
    args = p.parse_args()
    if args.worker:
        send_result(worker(args))
        return

    from segany.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random_vit_b.pth"  # written by fp32_model for vit_b
        model, name = fp32_model(args.model, Path(tmp))
        export_dir = Path(tmp) / "onnx"
        single_dir = Path(tmp) / "onnx_single"
        print(f"exporting {name} (fp32 + int8, with the accuracy report) ...", file=sys.stderr)
        t = time.perf_counter()
        export_onnx(model, export_dir, quantize=True, name=name, status=print)
        export_s = time.perf_counter() - t
        export_onnx(
            model, single_dir, quantize=True, return_single_mask=True, encoder=False, name=name
        )
        del model
        manifest = json.loads((export_dir / "manifest.json").read_text())
        report = json.loads((export_dir / "quantization_report.json").read_text())
        sizes = {k: v["bytes"] / 2**20 for k, v in manifest["files"].items()}
        runs = [("torch", "fp32"), ("torch", "auto"), ("onnx", "fp32"), ("onnx", "int8")]
        results = []
        for backend, precision in runs:
            options = [
                *("--backend", backend, "--precision", precision, "--weights", str(weights)),
                *("--export", str(export_dir), "--export-single", str(single_dir)),
                *("--model", args.model, "--repeats", str(args.repeats)),
            ]
            results.append(run_worker(__file__, options, f"{backend} {precision}"))
    m = machine()
    img_size = manifest["img_size"]
    base = results[0]
    print(
        f"\n{name} @{img_size}, image 1024x768, CPU: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}\n"
    )
    print(
        "| backend | precision | encoder `set_image` (s) | vs torch fp32 | decoder `predict` "
        "1 point, 3 masks (ms) | vs torch fp32 | decoder 1 point, 1 mask (ms) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        runtime = "PyTorch (segany)" if r["backend"] == "torch" else "ONNX Runtime"
        print(
            f"| {runtime} | {r['precision']} | {r['set_image_s']:.2f} | "
            f"{base['set_image_s'] / r['set_image_s']:.2f}x | {r['predict_ms']:.1f} | "
            f"{base['predict_ms'] / r['predict_ms']:.2f}x | {r['predict_single_ms']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    parts = report["parts"]
    print(
        f"\nint8 vs fp32 (ONNX, {name}, "
        f"{parts['int8']['masks']} masks on {len(report['scenes'])} generated scenes): "
        + "; ".join(
            f"{k}: mean mask IoU {v['mean_mask_iou']:.3f} (min {v['min_mask_iou']:.3f}), "
            f"mean |IoU-score error| {v['mean_abs_iou_score_error']:.4f}"
            for k, v in parts.items()
        )
    )
    print(
        f"export {export_s:.0f} s; files (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sizes.items())
    )
    write_results(
        args.out,
        f"onnx_{args.model}_cpu",
        {
            "machine": m,
            "results": results,
            "quantization_report": report,
            "export_s": export_s,
            "file_mb": sizes,
        },
    )


if __name__ == "__main__":
    main()
