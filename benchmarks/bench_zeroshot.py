"""Per-image time of the zero-shot tasks (``segany.zeroshot``) on the CPU.

On generated scenes (``segany.data.scenes``, ``--size`` WxH, default 640x480, the size of COCO
images) written as a COCO file, with the bundled ``segany_tiny`` (``--model segany_tiny``,
default) or vit_b-sized random weights (``--model vit_b``: a speed figure only), fp32 unless
``--precision``:

* ``proposals``: the paper's proposal generator (64x64 grid, NMS 0.9, top 1000), seconds per
  image;
* ``instances``: every ground-truth box of the image as a detection, box prompts plus the
  refinement pass, seconds per image and per box;
* ``edges``: the edge pipeline (16x16 grid, 768 masks, edge NMS), seconds per image, and the
  BSDS metrics against the objects' outer boundaries (``segany.viz.mask_boundary``).

``--data stardist`` runs the tasks on one real image instead: the 512x512 fluorescence nuclei
image with its 125 instance masks that the ``stardist`` package ships
(:func:`segany.data.package_samples.stardist_nuclei`; a test dependency).

Each task runs ``--images`` images (first one included: the encoder's warm-up is part of a real
run). Run: ``cd benchmarks && PYTHONPATH=.. python bench_zeroshot.py [--model vit_b]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, write_results


def samples(data: str, n: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image (H, W, 3) uint8, masks (N, H, W) bool)`` pairs: ``n`` generated scenes of
    ``size`` (W, H), or the stardist nuclei image."""
    if data == "stardist":
        from segany.data.package_samples import stardist_nuclei

        return [stardist_nuclei()]
    from segany.data.scenes import ProceduralScenes, SceneConfig

    w, h = size
    scenes = ProceduralScenes(n, seed=3, config=SceneConfig(height=h, width=w))
    return [(scenes[i].image, scenes[i].masks) for i in range(n)]


def make_data(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """The pairs as ``root/images`` + ``root/instances.json`` (COCO, RLE)."""
    from PIL import Image

    from segany.formats.coco import CocoWriter

    (root / "images").mkdir(parents=True)
    writer = CocoWriter()
    for i, (image, masks) in enumerate(pairs):
        name = f"image_{i}.png"
        Image.fromarray(image).save(root / "images" / name)
        h, w = image.shape[:2]
        writer.add_image(name, w, h, annotations=[{"segmentation": m} for m in masks])
    writer.write(root / "instances.json")
    return root


def edges_task(model, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Seconds per image of :func:`segany.zeroshot.edges.edge_map` and the BSDS metrics
    (99 thresholds) against the union of the masks' boundaries."""
    from segany.predictor import SamPredictor
    from segany.viz import mask_boundary
    from segany.zeroshot.edge_eval import evaluate_edges
    from segany.zeroshot.edges import edge_map

    predictor = SamPredictor(model)
    maps, gts, seconds = [], [], []
    for image, masks in pairs:
        t = time.perf_counter()
        maps.append(edge_map(predictor, image))
        seconds.append(time.perf_counter() - t)
        gt = np.zeros(image.shape[:2], bool)
        for m in masks:
            gt |= mask_boundary(m)
        gts.append([gt])
    r = evaluate_edges(maps, gts, thresholds=99)
    return {
        "seconds_per_image": float(np.mean(seconds)),
        "seconds": seconds,
        "metrics": {"ODS": r.ods, "OIS": r.ois, "AP": r.ap, "R50": r.r50},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("segany_tiny", "vit_b"), default="segany_tiny")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--size", default="640x480", help="WxH of the generated scenes")
    p.add_argument("--tasks", default="proposals,instances,edges")
    p.add_argument(
        "--data",
        choices=("scenes", "stardist"),
        default="scenes",
        help="generated scenes, or the real nuclei image the stardist package ships",
    )
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    import segany
    from segany.zeroshot.runs import run_instances, run_proposals

    size = tuple(int(v) for v in args.size.split("x"))
    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = samples(args.data, args.images, size)
        n_images = len(pairs)
        root = make_data(Path(tmp) / "data", pairs)
        if args.model == "vit_b":
            from bench_onnx import random_weights

            weights = Path(tmp) / "vit_b.pth"
            random_weights(weights)
            model = segany.build_sam("vit_b", weights, precision=args.precision, device="cpu")
        else:
            model = segany.load_model(args.model, precision=args.precision, device="cpu")
        out: dict = {}
        for task in tasks:
            t = time.perf_counter()
            if task == "proposals":
                r = run_proposals(
                    root / "instances.json",
                    root / "images",
                    Path(tmp) / task,
                    model,
                    progress=False,
                )
                n = len(json.loads((Path(tmp) / task / "proposals.json").read_text()))
                out[task] = {
                    "seconds_per_image": r["times"]["seconds_per_image"],
                    "proposals_per_image": n / n_images,
                    "metrics": r["metrics"],
                }
            elif task == "instances":
                r = run_instances(
                    root / "instances.json",
                    root / "images",
                    Path(tmp) / task,
                    model,
                    progress=False,
                )
                boxes = r["settings"]["detections"]
                spi = r["times"]["seconds_per_image"]
                out[task] = {
                    "seconds_per_image": spi,
                    "boxes_per_image": boxes / n_images,
                    "seconds_per_box": spi * n_images / boxes,
                    "metrics": r["metrics"],
                }
            elif task == "edges":
                out[task] = edges_task(model, pairs)
            else:
                raise SystemExit(f"unknown task {task!r}; allowed: proposals, instances, edges")
            print(
                f"{task}: {out[task]['seconds_per_image']:.2f} s per image "
                f"({time.perf_counter() - t:.1f} s in all)",
                file=sys.stderr,
            )
    results = {
        "model": args.model,
        "precision": args.precision,
        "data": args.data,
        "size": [pairs[0][0].shape[1], pairs[0][0].shape[0]],  # W, H
        "images": n_images,
        "tasks": out,
        "machine": machine(),
    }
    print(json.dumps(results, indent=1))
    suffix = "_stardist" if args.data == "stardist" else ""
    write_results(args.out, f"zeroshot_{args.model}{suffix}", results)


if __name__ == "__main__":
    main()
