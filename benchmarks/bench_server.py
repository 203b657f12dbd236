"""The annotation server's latencies, measured from a client over HTTP on 127.0.0.1:

* ingest: ``--images`` generated scenes (``ProceduralScenes``, 480x640 and 600x800 PNGs)
  uploaded one by one with ``POST /api/images``, then the time until the background worker has
  every embedding cached (``GET /api/stats`` polled every 50 ms);
* predict: the round trip of ``POST /api/images/{id}/predict`` (one foreground point, three
  masks, COCO RLE in the answer) on an image whose embedding is loaded, ``--clicks`` times, and
  with the previous answer's ``mask_input`` token fed back;
* first mask: opening another image whose embedding was prefetched (``GET /api/images/{id}``
  then its first ``predict``: the server loads the cached embedding from disk);
* for comparison, ``SamPredictor.set_image`` of the same model in this process on 3 of the
  images (what one embedding costs without the server).

The server is ``segany serve`` in a subprocess (the model given by ``--model``, default the
bundled ``segany_tiny``; ``vit_b`` means vit_b-sized random weights, written to a temporary
checkpoint), on a fresh project in a temporary folder, stopped at the end.

Run: ``python benchmarks/bench_server.py [--images 100] [--clicks 200] [--model M]``. Prints a
Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, write_results

TOKEN = "bench-token"


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _stats(msv: list[float]) -> dict[str, float]:
    a = np.asarray(msv)
    return {
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "n": len(a),
    }


def _start_server(root: Path, model: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "segany", "serve", str(root), "--port", "0", "--token", TOKEN,
           "--model", model]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()  # the URL, printed once the socket listens
    if not line.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"segany serve did not print its URL (got {line!r})")
    return proc, line.split("/?")[0]


def _cached(stats: dict) -> int:
    emb = stats.get("embeddings", {})
    return int(emb.get("cached", emb.get("encoded", 0)))


def _set_image_ms(model: str, images: list[np.ndarray], threads: int | None) -> list[float]:
    import torch

    import segany

    if threads:
        torch.set_num_threads(threads)
    predictor = segany.SamPredictor(segany.load_model(model, device="cpu"))
    predictor.set_image(images[0])  # warm-up
    out = []
    for image in images:
        t = time.perf_counter()
        predictor.set_image(image)
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(args: argparse.Namespace) -> dict:
    import httpx

    from segany.data.scenes import ProceduralScenes
    from segany.engine.store import Project

    scenes = ProceduralScenes(args.images + 1, seed=7, sizes=((480, 640), (600, 800)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        model = args.model
        if model == "vit_b":
            from bench_onnx import random_weights

            model = str(Path(tmp) / "random_vit_b.pth")
            random_weights(Path(model))
        Project.init(root, model=model).close()
        proc, base = _start_server(root, model, args.threads)
        try:
            client = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
            )
            pngs = [_png(scenes[i].image) for i in range(args.images)]
            t0 = time.perf_counter()
            ids = []
            for i, data in enumerate(pngs):
                r = client.post("/api/images", files={"file": (f"scene_{i}.png", data)})
                r.raise_for_status()
                ids.append(r.json()["id"])
            upload_s = time.perf_counter() - t0
            deadline = time.monotonic() + 3600
            while _cached(client.get("/api/stats").json()) < len(ids):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the embeddings were not all computed")
                time.sleep(0.05)
            ingest_s = time.perf_counter() - t0

            # predict round trips on one image (its embedding loaded by the first call)
            scene = scenes[0]
            k = int(np.argmax([m.sum() for m in scene.masks]))
            ys, xs = np.nonzero(scene.masks[k])
            rng = np.random.default_rng(0)

            def point() -> list[float]:
                j = int(rng.integers(len(xs)))
                return [float(xs[j]), float(ys[j])]

            url = f"/api/images/{ids[0]}/predict"
            for _ in range(10):  # warm-up
                client.post(url, json={"points": [point()], "labels": [1]}).raise_for_status()
            single, refine = [], []
            for _ in range(args.clicks):
                t = time.perf_counter()
                r = client.post(url, json={"points": [point()], "labels": [1]})
                single.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                token = r.json()["mask_input"]
                body = {"points": [point(), point()], "labels": [1, 1], "mask_input": token,
                        "multimask": False}  # fmt: skip
                t = time.perf_counter()
                client.post(url, json=body).raise_for_status()
                refine.append((time.perf_counter() - t) * 1000)

            # the first mask on each of the next images (prefetched: cached on disk)
            first = []
            for image_id in ids[1 : 1 + args.first]:
                t = time.perf_counter()
                client.get(f"/api/images/{image_id}").raise_for_status()
                r = client.post(
                    f"/api/images/{image_id}/predict", json={"points": [[100, 100]], "labels": [1]}
                )
                first.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        set_image = _set_image_ms(model, [scenes[i].image for i in range(3)], args.threads)
    return {
        "set_image_in_process": _stats(set_image),
        "ingest_per_image_ms": ingest_s * 1000 / args.images,
        "model": args.model,
        "images": args.images,
        "upload_s": upload_s,
        "ingest_with_embeddings_s": ingest_s,
        "predict_multimask": _stats(single),
        "predict_refine_with_mask_input": _stats(refine),
        "first_mask_after_open": _stats(first),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="segany_tiny")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--clicks", type=int, default=200)
    p.add_argument("--first", type=int, default=20, help="images timed for the first mask")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    result = run(args)
    result["machine"] = machine()
    result["command"] = "python benchmarks/bench_server.py " + " ".join(sys.argv[1:])
    print(f"\n| {args.model} server, {args.images} images | median ms | p95 ms |")
    print("|---|---|---|")
    for key in ("predict_multimask", "predict_refine_with_mask_input", "first_mask_after_open"):
        s = result[key]
        print(f"| {key.replace('_', ' ')} | {s['median_ms']:.1f} | {s['p95_ms']:.1f} |")
    print(
        f"\ningest of {args.images} images: upload {result['upload_s']:.1f} s, "
        f"with embeddings {result['ingest_with_embeddings_s']:.1f} s "
        f"({result['ingest_per_image_ms']:.0f} ms per image; set_image alone "
        f"{result['set_image_in_process']['median_ms']:.0f} ms)"
    )
    write_results(args.out, "server", result)


if __name__ == "__main__":
    main()
