"""Per-image time of the zero-shot tasks (``segany.zeroshot``) on the CPU.

On generated scenes (``segany.data.scenes``, ``--size`` WxH, default 640x480, the size of COCO
images) written as a COCO file, with the bundled ``segany_tiny`` (``--model segany_tiny``,
default) or vit_b-sized random weights (``--model vit_b``: a speed figure only), fp32 unless
``--precision``:

* ``proposals``: the paper's proposal generator (64x64 grid, NMS 0.9, top 1000), seconds per
  image;
* ``instances``: every ground-truth box of the image as a detection, box prompts plus the
  refinement pass, seconds per image and per box.

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

from common import RESULTS, machine, write_results


def make_data(root: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` generated scenes of ``size`` (W, H) as ``root/images`` + ``root/instances.json``."""
    from PIL import Image

    from segany.data.scenes import ProceduralScenes, SceneConfig
    from segany.formats.coco import CocoWriter

    (root / "images").mkdir(parents=True)
    w, h = size
    scenes = ProceduralScenes(n, seed=3, config=SceneConfig(height=h, width=w))
    writer = CocoWriter()
    for i in range(n):
        s = scenes[i]
        name = f"scene_{i}.png"
        Image.fromarray(s.image).save(root / "images" / name)
        writer.add_image(name, w, h, annotations=[{"segmentation": m} for m in s.masks])
    writer.write(root / "instances.json")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("segany_tiny", "vit_b"), default="segany_tiny")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--size", default="640x480", help="WxH of the generated scenes")
    p.add_argument("--tasks", default="proposals,instances")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    import segany
    from segany.zeroshot.runs import run_instances, run_proposals

    size = tuple(int(v) for v in args.size.split("x"))
    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp) / "data", args.images, size)
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
                    "proposals_per_image": n / args.images,
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
                    "boxes_per_image": boxes / args.images,
                    "seconds_per_box": spi * args.images / boxes,
                    "metrics": r["metrics"],
                }
            else:
                raise SystemExit(f"unknown task {task!r}; allowed: proposals, instances")
            print(
                f"{task}: {out[task]['seconds_per_image']:.2f} s per image "
                f"({time.perf_counter() - t:.1f} s in all)",
                file=sys.stderr,
            )
    results = {
        "model": args.model,
        "precision": args.precision,
        "size": list(size),
        "images": args.images,
        "tasks": out,
        "machine": machine(),
    }
    print(json.dumps(results, indent=1))
    write_results(args.out, f"zeroshot_{args.model}", results)


if __name__ == "__main__":
    main()
