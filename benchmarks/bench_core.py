"""Core benchmark: official ``segment-anything`` vs segany on the same weights and image.

Measures, for vit_b at 1024 px on a 1024x768 image:
* ``set_image`` wall time (median of ``--repeats``), official fp32 vs segany fp32 vs segany's
  default precision (``auto``) vs segany int8 (CPU only);
* ``predict`` for one point (median of 30, after warm-up);
* peak resident memory of the process during ``set_image`` (weights included) and the part added
  by ``set_image`` — the kernel's high-water mark, reset just before the call through
  ``/proc/self/clear_refs`` after returning freed heap to the OS — each configuration in its
  own process.

Run: ``python benchmarks/bench_core.py`` (add ``--device cuda --variant vit_h --compile`` on a GPU).
Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    RESULTS,
    add_worker_arguments,
    machine,
    rss_kb,
    run_worker,
    send_result,
    write_results,
)


def _trim_heap() -> None:
    """Return freed heap memory to the OS so the baseline RSS is what is really in use."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux / not permitted: peak includes earlier allocations
        pass


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    import torch

    from segany.data.sample import sample_image

    torch.manual_seed(0)
    image, objects = sample_image(1024, 768)
    point = np.array([objects[0].point])
    if args.impl == "official":
        from segment_anything import SamPredictor, sam_model_registry

        model = sam_model_registry[args.variant](checkpoint=args.weights).to(args.device).eval()
        predictor = SamPredictor(model)
    else:
        import segany

        model = segany.build_sam(
            args.variant, args.weights, precision=args.precision, device=args.device
        )
        if args.compile:
            segany.compile_model(model)
        predictor = segany.SamPredictor(model)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _trim_heap()
    rss_before = rss_kb("VmRSS")
    _reset_peak()
    times = []
    for i in range(args.repeats + (1 if args.device != "cpu" or args.compile else 0)):
        _sync(args.device)
        t = time.perf_counter()
        predictor.set_image(image)
        _sync(args.device)
        times.append(time.perf_counter() - t)
        if i == 0:
            peak_kb = rss_kb("VmHWM")
    if len(times) > args.repeats:  # warm-up run (GPU / compile) not counted
        times = times[1:]
    for _ in range(5):
        predictor.predict(point_coords=point, point_labels=np.array([1]))
    pt = []
    for _ in range(30):
        _sync(args.device)
        t = time.perf_counter()
        predictor.predict(point_coords=point, point_labels=np.array([1]))
        _sync(args.device)
        pt.append(time.perf_counter() - t)
    out = {
        "impl": args.impl,
        "precision": args.precision if args.impl == "segany" else "fp32",
        "compile": bool(args.compile),
        "set_image_s": float(np.median(times)),
        "predict_ms": float(np.median(pt) * 1000),
        "rss_before_mb": rss_before / 1024,
        "set_image_peak_mb": peak_kb / 1024,
        "set_image_added_mb": (peak_kb - rss_before) / 1024,
    }
    if args.impl == "segany":
        from segany.precision import model_precision

        out["dtype"] = model_precision(model)
    if args.device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="set_image runs per configuration")
    p.add_argument("--compile", action="store_true", help="also time segany with torch.compile")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    add_worker_arguments(p, impl="segany", precision="auto", weights=None)
    args = p.parse_args()
    if args.worker:
        send_result(worker(args))
        return

    import torch

    import segany

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"random_{args.variant}.pth"
        torch.manual_seed(0)
        model = segany.build_sam_model(segany.get_config(args.variant))
        torch.save(model.state_dict(), weights)
        del model
        runs = [] if args.skip_official else [("official", "fp32", False)]
        runs += [("segany", "fp32", False), ("segany", "auto", False)]
        if args.device == "cpu":
            runs.append(("segany", "int8", False))
        if args.compile:
            runs.append(("segany", "auto", True))
        results = []
        for impl, precision, comp in runs:
            options = [
                *("--impl", impl, "--precision", precision, "--weights", str(weights)),
                *("--variant", args.variant, "--device", args.device),
                *("--repeats", str(args.repeats)),
            ] + (["--compile"] if comp else [])
            label = f"{impl} {precision}{' compiled' if comp else ''}"
            results.append(run_worker(__file__, options, label))
    base = results[0] if not args.skip_official else None
    m = machine()
    print(
        f"\n{args.variant} @1024, image 1024x768, device {args.device}; {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']}\n"
    )
    print(
        "| implementation | precision | set_image (s) | speed-up | predict 1 point (ms) "
        "| speed-up | peak RSS in set_image (MB) | vs official | added by set_image (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        name = r["impl"] + (" + compile" if r["compile"] else "")
        prec = r.get("dtype", r["precision"])
        if r["impl"] == "segany" and r["precision"] == "auto":
            prec = f"default ({prec})"
        if base:
            rel = (
                f"{base['set_image_s'] / r['set_image_s']:.2f}x",
                f"{base['predict_ms'] / r['predict_ms']:.2f}x",
                f"{r['set_image_peak_mb'] / base['set_image_peak_mb']:.2f}x",
            )
        else:
            rel = ("", "", "")
        print(
            f"| {name} | {prec} | {r['set_image_s']:.2f} | {rel[0]} | {r['predict_ms']:.1f} | "
            f"{rel[1]} | {r['set_image_peak_mb']:.0f} | {rel[2]} | {r['set_image_added_mb']:.0f} |"
        )
    stem = f"core_{args.variant}_{args.device.replace(':', '')}"
    write_results(
        args.out,
        stem,
        {"machine": m, "variant": args.variant, "device": args.device, "results": results},
    )


if __name__ == "__main__":
    main()
