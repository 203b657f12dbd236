"""Wall time of the semi-automatic stage (``segany engine train-detector`` and ``segany engine
prefill``) on a project of generated scenes.

A fresh project gets ``--annotated`` procedural scenes (256x256 PNGs) with their ground-truth
masks as accepted manual masks, marked done (stage 1), and ``--images`` new scenes. Then, in
process with the bundled ``segany_tiny``: the box detector is trained on the annotated masks'
boxes (``--detector-steps`` steps, ``--arch``), the new images are prefilled with ``--method
detector`` (its boxes as SAM box prompts) and, on a second copy of the new images, with
``--method auto`` (the automatic generator at strict thresholds). Reported: seconds of each
phase, seconds per image and proposals per image, and the detector's seconds per step (to price
the default 200 steps).

Run: ``cd benchmarks && PYTHONPATH=.. python bench_prefill.py [--images 200]``. Prints a
Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_retrain import _png
from common import RESULTS, machine, write_results


def build(root: Path, annotated: int, new: int) -> float:
    """The project: ``annotated`` scenes with masks (done) and ``new`` scenes without."""
    from segany.data.scenes import ProceduralScenes
    from segany.engine.store import Project

    start = time.perf_counter()
    scenes = ProceduralScenes(annotated + new, seed=21)
    with Project.init(root) as project:
        for i in range(annotated + new):
            scene = scenes[i]
            image, _ = project.add_image_bytes(_png(scene.image), f"scene_{i:04d}.png")
            if i < annotated:
                for m in scene.masks:
                    if m.any():
                        project.add_mask(image.id, segmentation=m)
                project.set_status(image.id, "done")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="new images to prefill")
    parser.add_argument("--annotated", type=int, default=50, help="annotated images")
    parser.add_argument("--detector-steps", type=int, default=20)
    parser.add_argument("--arch", default="mobilenet_v3")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import segany
    from segany.engine.prefill import prefill_project
    from segany.engine.prefill.detector import train_project_detector
    from segany.engine.store import Project

    predictor = segany.SamPredictor(segany.load_model("segany_tiny"))
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="segany-bench-prefill-") as tmp:
        for method in ("detector", "auto"):
            root = Path(tmp) / method
            seconds[f"build_project_{method}"] = build(root, args.annotated, args.images)
            with Project.open(root) as project:
                if method == "detector":
                    t = time.perf_counter()
                    train_project_detector(project, steps=args.detector_steps, arch=args.arch)
                    seconds["train_detector"] = time.perf_counter() - t
                report = prefill_project(project, method=method, predictor=predictor)
                seconds[f"prefill_{method}"] = report.seconds
                counts[f"proposals_{method}"] = report.masks
                counts[f"images_{method}"] = len(report.prefilled)
    rows = {
        "train_detector_s_per_step": seconds["train_detector"] / args.detector_steps,
        **{
            f"prefill_{m}_s_per_image": seconds[f"prefill_{m}"] / max(1, counts[f"images_{m}"])
            for m in ("detector", "auto")
        },
        **{
            f"proposals_{m}_per_image": counts[f"proposals_{m}"] / max(1, counts[f"images_{m}"])
            for m in ("detector", "auto")
        },
    }
    results = {
        "benchmark": "prefill",
        "machine": machine(),
        "images": args.images,
        "annotated": args.annotated,
        "detector_steps": args.detector_steps,
        "arch": args.arch,
        "seconds": seconds,
        "counts": counts,
        **rows,
    }
    print("| phase | seconds |\n|---|---:|")
    for k, v in seconds.items():
        print(f"| {k} | {v:.1f} |")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    write_results(args.out, f"prefill_segany_tiny_{args.images}img", results)


if __name__ == "__main__":
    main()
