"""The fully automatic stage (``segany engine auto``): images per hour with the bundled model,
for the ``default`` and ``sa1b`` presets, in-process and on a local Ray with ``--workers``
actors.

Each configuration runs the command in a process of its own on the same generated scenes
(``segany.data.sample.sample_image``, 1024x768, one seed per image) into a fresh output
folder, and reads its ``report.json``. ``seconds`` is the command's own count, from the first
image to the last shard: in-process it includes loading the model; on Ray it also includes
starting Ray (``ray.init``, several seconds) and every actor loading its model, which is
the fixed overhead of the Ray path. ``wall_s`` is the whole process (imports included).
Modes: ``in-process`` (torch's default threads: every core), ``in-process-1-thread``
(``--threads 1``) and ``ray`` (``--workers`` actors, one torch thread each on its share of the
cores).

Run: ``python benchmarks/bench_engine_auto.py [--images 4] [--workers 2] [--presets default,sa1b]
[--modes in-process,in-process-1-thread,ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine, write_results

ROOT = Path(__file__).resolve().parents[1]


def write_scenes(folder: Path, count: int) -> None:
    from PIL import Image

    from segany.data.sample import sample_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = sample_image(1024, 768, seed=i)
        Image.fromarray(image).save(folder / f"scene_{i:03d}.png")


#: Values of ``--modes``: in-process with torch's default threads, in-process with one torch
#: thread, and Ray with ``--workers`` actors (one thread each).
MODES = ("in-process", "in-process-1-thread", "ray")


def run(images: Path, out: Path, preset: str, mode: str, workers: int, model: str) -> dict:
    cmd = [sys.executable, "-m", "segany", "engine", "auto", str(images), "--out", str(out)]
    cmd += ["--preset", preset, "--model", model, "--device", "cpu", "--quiet"]
    cmd += ["--shard-size", "100"]
    if mode == "ray":
        cmd += ["--workers", str(workers)]
    elif mode == "in-process-1-thread":
        cmd += ["--threads", "1"]
    label = f"{preset}, {mode}" + (f" ({workers} workers)" if mode == "ray" else "")
    print(f"running {label} ...", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        raise SystemExit(f"{label} failed")
    report = json.loads((out / "report.json").read_text())
    return {
        "preset": preset,
        "mode": mode,
        "workers": workers if mode == "ray" else 1,
        "images": report["done"],
        "masks": report["masks"],
        "seconds": report["seconds"],
        "wall_s": round(wall, 2),
        "images_per_hour": report["images_per_hour"],
        "masks_per_image": report["masks_per_image"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="scenes per configuration")
    p.add_argument("--workers", type=int, default=2, help="Ray actors")
    p.add_argument("--presets", default="default,sa1b")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    p.add_argument("--model", default="segany_tiny")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-auto-") as tmp:
        tmp = Path(tmp)
        write_scenes(tmp / "images", args.images)
        for preset in args.presets.split(","):
            for mode in args.modes.split(","):
                if mode not in MODES:
                    raise SystemExit(f"--modes: {mode!r} is not one of {MODES}")
                out = tmp / f"{preset}_{mode}"
                rows.append(run(tmp / "images", out, preset, mode, args.workers, args.model))
    print("\n| preset | mode | workers | images | masks/image | seconds | images/hour | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['mode']} | {r['workers']} | {r['images']} | "
            f"{r['masks_per_image']} | {r['seconds']:.1f} | {r['images_per_hour']:.0f} | "
            f"{r['wall_s']:.1f} |"
        )
    results = {
        "benchmark": "engine_auto",
        "model": args.model,
        "image_size": [1024, 768],
        "machine": machine(),
        "command": "python benchmarks/bench_engine_auto.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    write_results(args.out, f"engine_auto_{args.model}", results)


if __name__ == "__main__":
    main()
