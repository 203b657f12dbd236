"""``segany zeroshot edges``: edge maps from a 16x16 point grid, scored as BSDS500 does.

Writes ``OUT/edges/NAME.png`` (8-bit) per image; with ground truth (``--gt`` or a BSDS500 root)
also ``OUT/results.json``, ``OUT/results.md`` (ODS, OIS, AP, R50 beside the paper's row) and
``OUT/pr_curve.png``. Resumable: an image whose PNG and cached counts exist is not redone.
A missing folder, no images, or ground truth of another size is bad input (exit code 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    UsageError,
    add_model_args,
    bad_input,
    check_out_dir,
    positive_int,
    status,
)

__all__ = ["cmd_edges", "register"]


def register(actions: Any) -> None:
    """Add the ``edges`` action to the subparsers ``actions``."""
    p = actions.add_parser(
        "edges",
        help="zero-shot edge detection; BSDS500 ODS/OIS/AP/R50 with ground truth",
        description=(
            "Edge maps from a 16x16 grid of point prompts (three masks each, NMS 0.7, Sobel on "
            "the mask probability maps at their boundaries, max, edge NMS), as the SAM paper's "
            "section 7.2. With ground truth, scored as the BSDS500 benchmark does."
        ),
    )
    p.add_argument("images", metavar="IMAGES_DIR_OR_BSDS_ROOT", help="images or a BSDS500 root")
    p.add_argument("--out", metavar="OUT", required=True, help="output folder")
    p.add_argument(
        "--gt",
        metavar="GT_DIR",
        default=None,
        help="boundary ground truth: NAME.png, NAME_K.png (annotators) or NAME.mat",
    )
    p.add_argument("--max-images", metavar="N", type=positive_int, default=None)
    p.add_argument("--points-per-side", metavar="N", type=positive_int, default=16)
    p.add_argument("--points-per-batch", metavar="N", type=positive_int, default=32)
    p.add_argument("--thresholds", metavar="K", type=positive_int, default=99)
    add_model_args(p)
    p.set_defaults(func=cmd_edges)


def _plot(path: Path, result: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.files import atomic_write

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(result.recall, result.precision, "-", label="segany")
    ax.plot([result.ods_recall], [result.ods_precision], "o", label=f"ODS {result.ods:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def cmd_edges(args: argparse.Namespace) -> int:
    """``segany zeroshot edges``: see the module docstring."""
    import numpy as np
    from PIL import Image

    from ..io.files import atomic_write
    from ..io.image import load_image
    from ..predictor import SamPredictor
    from ..zeroshot.bsds import find_samples, load_boundaries
    from ..zeroshot.common import ImageCache, write_results
    from ..zeroshot.edge_eval import edge_counts, summarize_counts
    from ..zeroshot.edges import EDGE_SETTINGS, edge_map, edge_png
    from .common import load_model

    out = Path(args.out)
    check_out_dir(out)
    with bad_input():
        samples = find_samples(args.images, args.gt)
    samples = samples[: args.max_images] if args.max_images else samples
    with_gt = any(s.gt_files for s in samples)
    if with_gt:
        missing = [s.name for s in samples if not s.gt_files]
        if missing:
            raise UsageError(f"no ground truth for {len(missing)} image(s), e.g. {missing[0]}")
    (out / "edges").mkdir(parents=True, exist_ok=True)
    settings = {
        **EDGE_SETTINGS,
        "points_per_side": args.points_per_side,
        "thresholds": args.thresholds,
        "max_dist": 0.0075,
        "thin": True,
    }
    cache = ImageCache(out, {"model": str(args.model), **settings})
    status(f"{len(samples)} image(s) from {args.images}")
    predictor = None
    counts, times = [], []
    start = time.perf_counter()
    for i, s in enumerate(samples):
        with bad_input():
            image = load_image(s.image)
            gts = load_boundaries(s.gt_files) if with_gt else []
        for g in gts:
            if g.shape != image.shape[:2]:
                raise UsageError(
                    f"ground truth of {s.name} is {g.shape[1]}x{g.shape[0]}, the image is "
                    f"{image.shape[1]}x{image.shape[0]}"
                )
        png = out / "edges" / f"{s.name}.png"
        cached = cache.get(s.name)
        if cached is not None and png.is_file():
            edges = np.asarray(Image.open(png), np.float64) / 255.0
            seconds = cached["seconds"]
        else:
            if predictor is None:
                predictor = SamPredictor(load_model(args))
            t0 = time.perf_counter()
            edges = edge_map(
                predictor,
                image,
                points_per_side=args.points_per_side,
                points_per_batch=args.points_per_batch,
            )
            seconds = time.perf_counter() - t0
            with atomic_write(png) as tmp:
                Image.fromarray(edge_png(edges)).save(tmp, format="PNG")
            edges = edge_png(edges) / 255.0
            cached = None
        if with_gt:
            if cached is not None and "counts" in cached:
                c = cached["counts"]
            else:
                ic = edge_counts(edges, gts, args.thresholds)
                c = [ic.cnt_r.tolist(), ic.sum_r.tolist(), ic.cnt_p.tolist(), ic.sum_p.tolist()]
            counts.append(c)
            cache.put(s.name, {"seconds": seconds, "counts": c})
        else:
            cache.put(s.name, {"seconds": seconds})
        times.append(seconds)
        done = i + 1
        eta = (time.perf_counter() - start) / done * (len(samples) - done)
        status(f"[{done}/{len(samples)}] {s.name}: {seconds:.2f} s, ETA {eta:.0f} s")
    total = time.perf_counter() - start
    per_image = float(np.mean(times)) if times else 0.0
    if with_gt:
        from ..zeroshot.edge_eval import ImageCounts

        result = summarize_counts(
            [ImageCounts(*(np.asarray(a, np.int64) for a in c)) for c in counts], args.thresholds
        )
        _plot(out / "pr_curve.png", result)
        write_results(
            out,
            "edges",
            result.metrics(),
            model={"name": str(args.model), "precision": args.precision},
            settings=settings,
            times={
                "images": len(samples),
                "seconds_per_image": per_image,
                "total_s": total,
                "per_image_s": dict(zip([s.name for s in samples], times, strict=True)),
            },
            columns=["ODS", "OIS", "AP", "R50"],
            extra_md="![precision-recall](pr_curve.png)\n",
        )
        m = result.metrics()
        status(" ".join(f"{k} {v:.3f}" for k, v in m.items()))
        status(f"wrote {out / 'results.json'}, results.md, pr_curve.png")
    status(f"wrote {len(samples)} edge map(s) to {out / 'edges'}")
    return EXIT_OK
