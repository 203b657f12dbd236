"""Click -> mask latency of the in-browser decoder (ONNX Runtime Web, WASM, in a Web Worker) in
headless Chromium, against native ONNX Runtime on the same decoder.

The model's decoder is exported with ``segany.export.export_onnx(..., encoder=False)``
(``--model segany_tiny``, the bundled model, by default; ``--model vit_b`` uses vit_b-sized
random weights, seeded), the embedding of a generated 1024x768 scene
(``segany.data.sample.sample_image``) comes from ``SamPredictor``, and the page
``segany/engine/web/static/decoder-test.html`` is served on 127.0.0.1 with COOP/COEP (so the
worker has WASM threads). After the worker's warm-up (``--warmup`` decoder runs, 150 by default:
the WASM JIT needs ~100 to reach full speed), each of ``--clicks`` clicks (a point jittered
inside an object; the two output modes take turns) is timed in the page with ``performance.now()``, from posting the prompt to
the best mask drawn on a 1024x768 canvas:

* ``low``: the graph's output at the input frame's size, the low-res logits drawn scaled;
* ``full``: the masks upscaled to 1024x768 inside the graph and drawn at full size.

By default the worker runs the export's split decoder (``decoder_image.onnx`` once per
embedding, ``decoder_prompt.onnx`` per click); ``--no-split`` times ``decoder.onnx`` instead,
``--compare-split`` both, taking turns in four blocks of clicks each.
``--low-res-graph`` cuts ``decoder.onnx`` before its mask upscale (``low`` only, no split): what
a low-res-only decoder export would give.

Also shown: the worker's own decode time, the first click after warm-up, the load and warm-up
times, and native ONNX Runtime (Python, ``OnnxPredictor.predict``, 3 masks at 1024x768).

Run: ``python benchmarks/bench_browser_decoder.py [--model vit_b] [--clicks 50]`` (needs
chromium, playwright and ``make web``). Prints a Markdown table and writes JSON to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from common import machine as core_machine

TIMEOUT_MS = 600_000

PAGE_SCRIPT = """async ({h, w, point, clicks, warmup, quantized, split, compare, numThreads,
                 sessionOptions, modes}) => {
    const d = window.seganyDecoder;
    const options = {manifestUrl: "/model/manifest.json", warmup, quantized, numThreads,
                     sessionOptions};
    // With compare, the split decoder and decoder.onnx take turns in blocks of clicks (the
    // worker loads and warms up the other one between blocks), so that a slow spell of the
    // machine hits both; a second worker would not do: its idle threads spin.
    const configs = compare ? [["", true], [" (decoder.onnx)", false]] : [["", split]];
    const rounds = compare ? 4 : 1;
    const per = Math.ceil(clicks / rounds);
    d.canvas.width = w;
    d.canvas.height = h;
    const out = {ready: null, modes: {}};
    for (let round = 0; round < rounds; round++) {
        for (const [suffix, s] of configs) {
            const info = await d.client.init({...options, split: s});
            out.ready = out.ready || info;
            await d.client.setEmbedding({url: "/emb.bin", dtype: "float32",
                                         originalSize: [h, w]});
            // The modes take turns click by click.
            for (let i = round * per; i < Math.min(clicks, (round + 1) * per); i++) {
                const p = [point[0] + ((i * 7) % 11) - 5, point[1] + ((i * 5) % 9) - 4];
                for (const mode of modes) {
                    const key = mode + suffix;
                    out.modes[key] = out.modes[key] || {click: [], worker: []};
                    const t0 = performance.now();
                    const r = await d.client.decode({points: [p], labels: [1], multimask: true,
                                                     output: mode});
                    d.drawMask(d.canvas, r, d.bestIndex(r));
                    out.modes[key].click.push(performance.now() - t0);
                    out.modes[key].worker.push(r.decodeMs);
                }
            }
        }
    }
    return out;
}"""


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "first_ms": float(a[0]),
        "n": len(values),
    }


def native_ms(export_dir: Path, emb: np.ndarray, size, point, quantized: bool) -> float:
    """Median ``OnnxPredictor.predict`` time (1 point, 3 masks at full size) over 30 calls."""
    from segany.runtime import OnnxPredictor

    pred = OnnxPredictor(export_dir, quantized=quantized)
    pred.set_embedding(emb, size)
    kw = dict(point_coords=np.array([point]), point_labels=np.array([1]))
    for _ in range(5):
        pred.predict(**kw)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        pred.predict(**kw)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def cut_upscale(export_dir: Path, manifest: dict) -> None:
    """Replace ``decoder.onnx`` by its graph cut before the mask upscale (outputs
    ``iou_predictions`` and ``low_res_masks``): what a low-res-only export would cost."""
    import onnx
    from onnx.utils import Extractor

    path = export_dir / manifest["files"]["decoder"]["file"]
    model = onnx.load(str(path))
    inputs = [i.name for i in model.graph.input]
    onnx.save(Extractor(model).extract_model(inputs, ["iou_predictions", "low_res_masks"]), path)


def run_browser(export_dir: Path, emb: np.ndarray, size, point, args) -> tuple[dict, str]:
    from playwright.sync_api import sync_playwright

    from segany.engine.web import STATIC_DIR, isolated_server, launch_chromium

    routes = {"static": STATIC_DIR, "model": export_dir, "emb.bin": emb.tobytes()}
    with isolated_server(routes) as base, sync_playwright() as pw:
        browser = launch_chromium(pw, TIMEOUT_MS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{base}/static/decoder-test.html?timeout={TIMEOUT_MS}")
            page.wait_for_function("window.seganyDecoderLoaded === true")
            h, w = size
            params = {
                "h": h,
                "w": w,
                "point": list(point),
                "clicks": args.clicks,
                "warmup": args.warmup,
                "quantized": args.int8,
                "split": not (args.no_split or args.low_res_graph),
                "compare": args.compare_split,
                "numThreads": args.threads or None,
                "sessionOptions": json.loads(args.session_options),
                "modes": ["low"] if args.low_res_graph else ["low", "full"],
            }
            out = page.evaluate(PAGE_SCRIPT, params)
            version = browser.version
            context.close()
        finally:
            browser.close()
    return out, version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("segany_tiny", "vit_b"), default="segany_tiny")
    p.add_argument("--clicks", type=int, default=50, help="timed clicks per output mode")
    p.add_argument("--warmup", type=int, default=150, help="decoder runs in the worker first")
    p.add_argument("--threads", type=int, default=0, help="WASM threads (0: all cores)")
    p.add_argument(
        "--session-options", default="{}", help="JSON merged into the ORT Web session options"
    )
    p.add_argument("--int8", action="store_true", help="the int8 decoder (export --quantize)")
    p.add_argument(
        "--no-split",
        action="store_true",
        help="decoder.onnx per click instead of the split decoder (decoder_image.onnx once per "
        "embedding, decoder_prompt.onnx per click)",
    )
    p.add_argument(
        "--compare-split",
        action="store_true",
        help="also time decoder.onnx, in blocks of clicks in turn with the split decoder",
    )
    p.add_argument(
        "--low-res-graph",
        action="store_true",
        help="time the decoder graph cut before its upscale (iou_predictions, low_res_masks only)",
    )
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    import torch

    import segany
    from segany.data.sample import sample_image
    from segany.engine.web import browser_unavailable
    from segany.export import export_onnx

    reason = browser_unavailable()
    if reason:
        raise SystemExit(reason)
    image, objects = sample_image(1024, 768)
    point = objects[2].point  # the blue panel
    with tempfile.TemporaryDirectory() as tmp:
        from bench_onnx import fp32_model

        model, name = fp32_model(args.model, Path(tmp))
        export_dir = Path(tmp) / "onnx"
        print(f"exporting the {name} decoder ...", file=sys.stderr)
        export_onnx(model, export_dir, encoder=False, quantize=args.int8, name=name)
        predictor = segany.SamPredictor(model)
        with torch.inference_mode():
            predictor.set_image(image)
        emb = predictor.get_image_embedding().float().numpy()
        del model, predictor
        size = image.shape[:2]
        print("native ONNX Runtime ...", file=sys.stderr)
        native = native_ms(export_dir, emb, size, point, args.int8)
        manifest = json.loads((export_dir / "manifest.json").read_text())
        graph = "full" if args.no_split or args.int8 else "split (image half once, prompt half)"
        if args.low_res_graph:
            cut_upscale(export_dir, manifest)  # before the browser loads it
            graph = "low-res only"
        print(f"headless Chromium ({args.warmup} warm-up runs) ...", file=sys.stderr)
        load_before = os.getloadavg()[0]
        out, version = run_browser(export_dir, emb, size, point, args)
        load_after = os.getloadavg()[0]
    ort_web = json.loads(
        (Path(__file__).resolve().parents[1] / "segany/engine/web/package.json").read_text()
    )["dependencies"]["onnxruntime-web"]
    m = {**core_machine(), "chromium": version, "onnxruntime_web": ort_web}
    precision = "int8" if args.int8 else "fp32"
    ready = out["ready"]
    rows = {}
    for mode, data in out["modes"].items():
        rows[mode] = {
            "click_to_drawn": _stats(data["click"]),
            "worker_decode": _stats(data["worker"]),
        }
    print(
        f"\n{name} {precision} decoder ({graph} graph, img_size {manifest['img_size']}), image 1024x768, "
        "1 point, 3 masks; "
        f"CPU: {m['cpu']}, {m['cores']} cores; Chromium {version}, onnxruntime-web {ort_web}, "
        f"{ready['numThreads']} WASM threads (crossOriginIsolated {ready['crossOriginIsolated']}); "
        f"decoder load {ready['loadMs']:.0f} ms, warm-up {ready['warmupRuns']} runs in "
        f"{ready['warmupMs'] / 1000:.1f} s; load average {load_before:.2f} -> {load_after:.2f}\n"
    )
    print(
        "| output | click -> mask drawn, median (ms) | p95 (ms) | first click (ms) | "
        "worker decode, median (ms) |"
    )
    print("|---|---:|---:|---:|---:|")
    labels = {"low": "input frame, low-res logits drawn scaled", "full": "upscaled to 1024x768"}
    for mode, r in rows.items():
        c, wk = r["click_to_drawn"], r["worker_decode"]
        base, _, other = mode.partition(" ")
        print(
            f"| {labels[base]}{' ' + other if other else ''} | {c['median_ms']:.1f} | {c['p95_ms']:.1f} | {c['first_ms']:.1f} | "
            f"{wk['median_ms']:.1f} |"
        )
    print(f"| native ONNX Runtime (Python), upscaled to 1024x768 | {native:.1f} | – | – | – |")
    results = {
        "model": name,
        "precision": precision,
        "session_options": json.loads(args.session_options),
        "decoder_graph": graph,
        "img_size": manifest["img_size"],
        "image": [1024, 768],
        "clicks": args.clicks,
        "warmup_runs": ready["warmupRuns"],
        "warmup_ms": ready["warmupMs"],
        "load_ms": ready["loadMs"],
        "wasm_threads": ready["numThreads"],
        "cross_origin_isolated": ready["crossOriginIsolated"],
        "browser": rows,
        "native_onnxruntime_ms": native,
        "raw": out["modes"],
        "load_average": [load_before, load_after],
        "machine": m,
    }
    stem = f"browser_decoder_{name}_{precision}" + ("_lowres" if args.low_res_graph else "")
    write_results(args.out, stem, results)


if __name__ == "__main__":
    main()
