"""The proposal and instance tasks end to end, as ``segany zeroshot proposals|instances`` run
them: annotations and images in, per-image work (resumable), COCO results and metrics out.

Both write into ``out``: the COCO results file (``proposals.json`` / ``segmentations.json``,
written atomically once every image is done), ``results.json`` and ``results.md``
(:func:`segany.zeroshot.common.write_results`), a plot PNG, and ``cache/`` (one file per
finished image: a killed run resumes there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import write_json_atomic
from .coco_eval import is_lvis, load_annotations, mask_ap, proposal_recall
from .common import PAPER, ImageCache, image_entries, read_json, run_images, write_results
from .instances import BOX_BATCH, check_detections, gt_detections, segment_boxes
from .overlays import write_overlays
from .proposals import ProposalSettings, make_generator, propose

__all__ = ["model_info", "run_instances", "run_proposals"]

Say = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def _name(annotations: Any) -> str:
    """The annotations' file for results.json (or what they were given as)."""
    if isinstance(annotations, (str, os.PathLike)):
        return str(annotations)
    return str(getattr(annotations, "source", "in memory"))


def model_info(model: Any, name: str | None = None) -> dict[str, Any]:
    """``{"name", "fingerprint", "dtype", "device"}`` of a ``Sam`` for results.json."""
    from ..io.embedding import model_fingerprint

    return {
        "name": name or "custom",
        "fingerprint": model_fingerprint(model),
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device),
    }


def _plot(path: Path, draw: Callable[[Any], None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.files import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    try:
        draw(ax)
        fig.tight_layout()
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def run_proposals(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    model: Any,
    *,
    model_name: str | None = None,
    settings: ProposalSettings | None = None,
    max_images: int | None = None,
    progress: bool = True,
    say: Say = _silent,
) -> dict[str, Any]:
    """Object proposals for the images of ``annotations`` (COCO or LVIS JSON; image files
    under ``images``) with ``model`` (a ``Sam``), scored by class-agnostic mask AR@K.

    Writes ``out/proposals.json`` (COCO results: ``image_id``, ``category_id`` 1,
    ``segmentation`` RLE, ``score``, ``bbox``), ``out/results.json``, ``out/results.md`` and
    ``out/ar.png``; returns the results dict. Raises ValueError for bad input.
    """
    settings = settings or ProposalSettings()
    out = Path(out)
    gt = load_annotations(annotations)
    entries = image_entries(gt, images, max_images)
    info = model_info(model, model_name)
    cache = ImageCache(
        out, {"task": "proposals", "model": info["fingerprint"], **settings.to_dict()}
    )
    generator = make_generator(model, settings)
    say(
        f"proposals for {len(entries)} images ({settings.points_per_side}x{settings.points_per_side} grid)"
    )
    per_image, times = run_images(
        entries,
        cache,
        lambda e, im: propose(generator, im, e["id"], settings),
        desc="proposals",
        progress=progress,
    )
    results = [r for e in entries for r in per_image[e["id"]]]
    write_json_atomic(out / "proposals.json", results)
    say("scoring with pycocotools (class-agnostic mask AR) ...")
    metrics = proposal_recall(gt, results, [e["id"] for e in entries])
    columns = list(metrics)  # AR@10, AR@100, AR@1000, then by size and LVIS group
    _plot(out / "ar.png", lambda ax: _draw_ar(ax, metrics))
    overlays = write_overlays(out, gt, entries, per_image)
    return write_results(
        out,
        "proposals",
        metrics,
        model=info,
        settings={**settings.to_dict(), "annotations": _name(annotations), "lvis": is_lvis(gt)},
        times=times,
        columns=columns,
        extra_md="\n![AR vs proposals per image](ar.png)\n" + _overlay_md(overlays),
        extra={"overlays": overlays},
    )


def _overlay_md(overlays: Sequence[Mapping[str, Any]]) -> str:
    """Markdown links to the overlays, with each image's coverage."""
    if not overlays:
        return ""
    lines = ["", "Best and worst images (coverage: mean best IoU of the ground-truth masks):", ""]
    lines += [
        f"* {o['kind']}: {o['file_name']} ({o['coverage']:.3f}): [{o['file']}]({o['file']})"
        for o in overlays
    ]
    return "\n".join(lines) + "\n"


def _draw_ar(ax: Any, metrics: Mapping[str, float]) -> None:
    ks = [10, 100, 1000]
    ax.plot(ks, [metrics[f"AR@{k}"] for k in ks], "o-", label="segany (this run)")
    paper = PAPER["proposals"]["metrics"].get("AR@1000")
    if paper is not None:
        ax.plot([1000], [paper], "s", label="SAM ViT-H, paper (LVIS)")
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("mask AR")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _mask_ious(gt: Any, results: Sequence[Mapping[str, Any]]) -> list[float]:
    from ..formats.rle import decode_coco_rle
    from ..masks import mask_iou

    out = []
    for r in results:
        ann = gt.anns[r["ann_id"]]
        truth = gt.annToMask(ann).astype(bool)
        out.append(float(mask_iou(decode_coco_rle(r["segmentation"]), truth)))
    return out


def run_instances(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    model: Any,
    *,
    detections: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    refine: bool = True,
    max_images: int | None = None,
    batch: int = BOX_BATCH,
    progress: bool = True,
    say: Say = _silent,
) -> dict[str, Any]:
    """Instance segmentation from boxes: ``detections`` (a COCO detections JSON file or list;
    None: the ground-truth boxes, score 1) prompt ``model`` (a ``Sam``), with the refinement
    pass unless ``refine`` is False; scored by COCO mask AP (and, with ground-truth boxes, the
    mIoU of each mask with its own ground truth).

    Writes ``out/segmentations.json`` (COCO results with RLE), ``out/results.json``,
    ``out/results.md`` and ``out/ap.png``; returns the results dict. Raises ValueError for bad
    input.
    """
    from ..predictor import SamPredictor

    out = Path(out)
    gt = load_annotations(annotations)
    entries = image_entries(gt, images, max_images)
    ids = [e["id"] for e in entries]
    use_gt = detections is None
    if use_gt:
        dets = gt_detections(gt, ids)
        source = "gt"
    else:
        if isinstance(detections, (str, os.PathLike)):
            raw, source = read_json(detections), str(detections)
        else:
            raw, source = list(detections), "list"
        dets = check_detections(raw, set(gt.getImgIds()), set(gt.getCatIds()))
        dets = [d for d in dets if d["image_id"] in set(ids)]
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for d in dets:
        by_image[d["image_id"]].append(d)
    info = model_info(model, model_name)
    cache = ImageCache(
        out, {"task": "instances", "model": info["fingerprint"], "refine": refine, "boxes": source}
    )
    predictor = SamPredictor(model)

    def work(entry: Mapping[str, Any], image: np.ndarray) -> list[dict[str, Any]]:
        found = by_image[entry["id"]]
        if not found:
            return []
        results, _ = segment_boxes(predictor, image, found, refine=refine, batch=batch)
        return results

    say(f"masks for {len(dets)} boxes on {len(entries)} images (boxes: {source})")
    per_image, times = run_images(entries, cache, work, desc="instances", progress=progress)
    results = [r for e in entries for r in per_image[e["id"]]]
    write_json_atomic(out / "segmentations.json", results)
    say("scoring with pycocotools (mask AP) ...")
    metrics: dict[str, Any] = mask_ap(gt, results, ids)
    if use_gt:
        ious = _mask_ious(gt, results)
        metrics["mIoU"] = float(np.mean(ious)) if ious else None
    _plot(out / "ap.png", lambda ax: _draw_ap(ax, metrics))
    overlays = write_overlays(out, gt, entries, per_image)
    paper = PAPER["instances"]
    if is_lvis(gt):
        paper = {"dataset": "LVIS v1 val, ViTDet-H boxes", "metrics": paper["lvis_metrics"]}
    return write_results(
        out,
        "instances",
        metrics,
        model=info,
        settings={
            "annotations": _name(annotations),
            "boxes": source,
            "refine": refine,
            "lvis": is_lvis(gt),
            "detections": len(dets),
        },
        times=times,
        paper=paper,
        extra_md="\n![AP by object size](ap.png)\n" + _overlay_md(overlays),
        extra={"overlays": overlays},
    )


def _draw_ap(ax: Any, metrics: Mapping[str, float]) -> None:
    names = ["AP", "AP_small", "AP_medium", "AP_large"]
    values = [max(0.0, metrics[n]) for n in names]
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), ["all", "small", "medium", "large"])
    ax.set_ylabel("mask AP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
