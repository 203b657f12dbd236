"""Wall time of ``segany engine retrain`` on a project of generated scenes.

A fresh project in a temporary folder gets ``--images`` procedural scenes (``ProceduralScenes``,
256x256 PNGs) with their ground-truth masks as accepted manual masks (stage 1); then one
retrain of the bundled ``segany_tiny`` runs in-process (:func:`segany.engine.retrain.retrain`:
the default decoder-only config with ``--steps`` steps, 10 % held out, all held-out masks
evaluated at 1 and 5 points, the ONNX decoder exported). Reported: the seconds of each phase
(building the project, snapshot, training, evaluation of both models, export, total) and the
seconds per training step, so that the default schedule (200 steps) can be priced.

Run: ``python benchmarks/bench_retrain.py [--images 200] [--steps 20] [--device cpu]``.
Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, write_results


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def build_project(root: Path, n: int) -> tuple[float, int]:
    """A project of ``n`` scenes with their masks; returns (seconds, masks added)."""
    from segany.data.scenes import ProceduralScenes
    from segany.engine.store import Project

    start = time.perf_counter()
    scenes = ProceduralScenes(n, seed=11)
    masks = 0
    with Project.init(root) as project:
        for i in range(n):
            scene = scenes[i]
            image, _ = project.add_image_bytes(_png(scene.image), f"scene_{i:04d}.png")
            for m in scene.masks:
                if m.any():
                    project.add_mask(image.id, segmentation=m)
                    masks += 1
    return time.perf_counter() - start, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from segany.engine.retrain import DEFAULT_CONFIG, retrain
    from segany.engine.store import Project

    with tempfile.TemporaryDirectory(prefix="segany-bench-retrain-") as tmp:
        root = Path(tmp) / "project"
        build_s, masks = build_project(root, args.images)
        with Project.open(root) as project:
            result = retrain(project, steps=args.steps, device=args.device)
        seconds = {"build_project": build_s, **result.seconds}
        counts = result.dataset.version.counts
    per_step = seconds["train"] / args.steps
    results = {
        "benchmark": "retrain",
        "machine": machine(),
        "images": args.images,
        "masks": masks,
        "steps": args.steps,
        "device": args.device or "default",
        "config": DEFAULT_CONFIG,
        "counts": counts,
        "seconds": seconds,
        "train_s_per_step": per_step,
        "default_schedule_train_s": per_step * DEFAULT_CONFIG["steps"],
        "parent_score": result.parent["score"],
        "new_score": result.new["score"],
        "switched": result.switched,
    }
    print("| phase | seconds |\n|---|---:|")
    for k, v in seconds.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| train per step | {per_step:.2f} |")
    print(
        f"| train, default {DEFAULT_CONFIG['steps']} steps (priced) | {per_step * DEFAULT_CONFIG['steps']:.0f} |"
    )
    write_results(args.out, f"retrain_segany_tiny_{args.images}img", results)


if __name__ == "__main__":
    main()
