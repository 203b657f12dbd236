"""The simulated loop's stage-2 (``prefill``) and stage-3 (``auto``) rounds, built on the
data engine's own code paths (:func:`segany.engine.prefill.prefill_project`, the server's
review routes, :func:`segany.engine.stages.run_auto` and :func:`~segany.engine.stages.import_shards`).

A ``prefill`` round (:func:`prefill_round`), after the round's images were uploaded:

1. the method is the config's ``prefill_method``, or by default ``detector`` when the
   project's accepted ``manual`` masks cover at least :data:`DETECTOR_MIN_IMAGES` images,
   else ``auto``; with ``detector`` and no detector in the project yet, one is trained first
   (:func:`segany.engine.prefill.detector.train_project_detector`, ``detector_steps`` steps of
   ``detector_arch`` on the CPU);
2. the project's new images are prefilled (stored as ``source="prefill"`` proposals);
3. for each image the annotator leases it, lists its masks (``GET /api/images/{id}/masks``)
   and reviews the proposals, highest predicted IoU first: each is matched to the unmatched
   true mask (any non-empty true mask of the image) of highest IoU (:func:`segany.masks.mask_iou`);
   IoU >= ``iou_target`` -> ``POST /api/masks/{id}/accept`` (that true mask is matched now);
   otherwise (a match below the target, or no overlap at all) ->
   ``POST /api/masks/{id}/reject``; a rejected proposal is not edited: its object is
   annotated by clicks like any object no accepted proposal covers. Each review takes
   ``seconds_per_review`` simulated seconds plus the measured latency of listing the image's
   masks, shared among its proposals;
4. the target masks (the first ``masks_per_image`` non-empty true masks) that no accepted
   proposal matched are annotated by clicks as in stage 1 (masks of stage 2), and the image
   is marked done.

An ``auto`` round (:func:`auto_round`) runs the fully automatic stage in-process over the
round's images (``OUT/auto/round_NN/``: the images, the shards), imports the shards into the
project as ``source="auto"``, stage-3 masks, marks the images done, and compares the stored
automatic masks with the truth (:func:`segany.masks.match_mask_sets`). No annotator clicks.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...formats import decode_coco_rle
from ...io.files import write_bytes_atomic
from ...masks import mask_iou, match_mask_sets
from .annotator import MaskOutcome, SimulatedAnnotator, target_order
from .context import RoundContext

__all__ = [
    "DETECTOR_MIN_IMAGES",
    "STAGE_HOOKS",
    "auto_round",
    "choose_prefill_method",
    "prefill_round",
]

#: The default prefill method is ``detector`` once the accepted manual masks cover this many
#: images (enough to train a box detector on), else ``auto``.
DETECTOR_MIN_IMAGES = 4


def choose_prefill_method(ctx: RoundContext) -> tuple[str, dict[str, Any]]:
    """The round's prefill method and what was done to get it: ``(method, info)``; ``info``
    has ``detector`` (the file's name) and, when one was trained now, its ``detector_steps``,
    first and last loss and ``detector_seconds``. Trains a detector when the method is
    ``detector`` and the project has none."""
    from ..prefill.detector import (
        NoDetectorError,
        detector_dataset,
        newest_detector,
        train_project_detector,
    )

    cfg = ctx.config
    method = cfg.prefill_method
    if method is None:
        enough = len(detector_dataset(ctx.project)) >= DETECTOR_MIN_IMAGES
        method = "detector" if enough else "auto"
    info: dict[str, Any] = {}
    if method == "detector":
        try:
            path = newest_detector(ctx.project.root)
        except NoDetectorError:
            path, record = train_project_detector(
                ctx.project, steps=cfg.detector_steps, arch=cfg.detector_arch, device="cpu",
                seed=cfg.seed,
            )  # fmt: skip
            info.update(
                detector_steps=record["steps"], detector_loss_first=record["losses"][0],
                detector_loss_last=record["losses"][-1], detector_seconds=record["seconds"],
                detector_images=record["images"],
            )  # fmt: skip
        info["detector"] = Path(path).name
    return method, info


def _truth(ctx: RoundContext, index: int) -> np.ndarray:
    return np.asarray(ctx.dataset[index].masks, bool)


def prefill_round(ctx: RoundContext) -> list[MaskOutcome]:
    """A stage-2 round (module docstring). Returns the outcomes of the masks made by clicks;
    sets ``ctx.row`` (``prefill``: method, proposals, accepted, rejected (of them
    ``rejected_low``, matched below the target, and ``rejected_unmatched``), review seconds;
    ``masks`` and ``masks_per_image`` counting the accepted proposals; ``seconds_per_image``
    with the reviews; ``miou_final`` over the clicked and the accepted masks) and
    ``ctx.records`` (one line per review)."""
    from ..prefill import prefill_project

    cfg = ctx.config
    method, info = choose_prefill_method(ctx)
    knobs = None if cfg.points_per_side is None else {"points_per_side": cfg.points_per_side}
    t = time.perf_counter()
    report = prefill_project(
        ctx.project, method=method, min_score=cfg.prefill_min_score, images="new",
        device=cfg.device, auto_knobs=knobs if method == "auto" else None,
    )  # fmt: skip
    prefill_seconds = time.perf_counter() - t
    annotator = SimulatedAnnotator.for_round(ctx)
    outcomes: list[MaskOutcome] = []
    counts = {"accepted": 0, "rejected_low": 0, "rejected_unmatched": 0}
    review_ms = 0
    accepted_ious: list[float] = []
    for image_id, index in ctx.images:
        truth = _truth(ctx, index)
        present = target_order(truth)
        annotator.call("POST", f"/api/images/{image_id}/lease")
        t = time.perf_counter()
        listed = annotator.call("GET", f"/api/images/{image_id}/masks")
        fetch = time.perf_counter() - t
        proposals = sorted(
            (m for m in listed if m["review"] == "proposal"),
            key=lambda m: -(m["predicted_iou"] or 0.0),
        )
        share = fetch / max(1, len(proposals))
        matched: dict[int, int] = {}
        for p in proposals:
            mask = np.asarray(decode_coco_rle(p["segmentation"]), bool)
            free = [k for k in present if k not in matched]
            ious = mask_iou(mask[None], truth[free]) if free else np.zeros(0)
            best = int(np.argmax(ious)) if len(ious) else -1
            iou = float(ious[best]) if best >= 0 else 0.0
            elapsed_ms = int(round((cfg.seconds_per_review + share) * 1000))
            review_ms += elapsed_ms
            body = {"version": p["version"], "elapsed_ms": elapsed_ms}
            if iou >= cfg.iou_target:
                annotator.call("POST", f"/api/masks/{p['id']}/accept", body)
                matched[free[best]] = int(p["id"])
                counts["accepted"] += 1
                accepted_ious.append(iou)
                verdict = "accept"
            else:
                annotator.call("POST", f"/api/masks/{p['id']}/reject", body)
                counts["rejected_low" if iou > 0 else "rejected_unmatched"] += 1
                verdict = "reject"
            ctx.records.append(
                {"round": ctx.number, "image_id": image_id, "review": verdict,
                 "mask_id": int(p["id"]), "target": free[best] if best >= 0 else None,
                 "iou": iou, "elapsed_ms": elapsed_ms}
            )  # fmt: skip
        for k in target_order(truth, cfg.masks_per_image):
            if k not in matched:
                outcomes.append(annotator.annotate_mask(image_id, truth[k], k))
        annotator.call("POST", f"/api/images/{image_id}/status", {"status": "done"})
    n = len(ctx.images)
    clicked = [o for o in outcomes if o.accepted]
    finals = [o.iou for o in outcomes] + accepted_ious
    total_s = (review_ms + sum(o.elapsed_ms for o in outcomes)) / 1000
    rejected = counts["rejected_low"] + counts["rejected_unmatched"]
    ctx.row.update(
        {
            "prefill": {
                "method": method, **info, "proposals": report.masks, **counts,
                "rejected": rejected,
                "review_seconds": review_ms / 1000, "prefill_seconds": prefill_seconds,
            },
            "clicked_masks": len(clicked),
            "masks": len(clicked) + counts["accepted"],
            "masks_per_image": (len(clicked) + counts["accepted"]) / n if n else None,
            "seconds_per_image": total_s / n if n else None,
            "miou_final": float(np.mean(finals)) if finals else None,
        }
    )  # fmt: skip
    return outcomes


def auto_round(ctx: RoundContext) -> list[MaskOutcome]:
    """A stage-3 round (module docstring). Returns no outcomes; sets ``ctx.row``: ``masks``
    and ``masks_per_image`` (the stored automatic masks) and ``auto`` (preset, the import
    report, ``recall_50``, ``recall_target``, ``precision``, ``miou_matched``, the counts
    behind them, and the generator's wall time)."""
    from ..stages import PRESETS, GeneratorSpec, import_shards, run_auto

    cfg = ctx.config
    project = ctx.project
    folder = Path(cfg.out) / "auto" / f"round_{ctx.number:02d}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image_id, _ in ctx.images:
        src = project.image_file(image_id)
        write_bytes_atomic(folder / "images" / src.name, src.read_bytes())
    overrides = {} if cfg.points_per_side is None else {"points_per_side": cfg.points_per_side}
    spec = GeneratorSpec.from_preset(
        PRESETS[cfg.auto_preset], model=project.model, device=cfg.device, **overrides
    )
    with contextlib.redirect_stdout(sys.stderr):  # run_auto prints its report line
        run = run_auto(folder / "images", folder / "shards", spec=spec, progress=False)
    imported = import_shards(project, folder / "shards")
    totals = {"true": 0, "covered_50": 0, "covered_target": 0, "auto": 0, "precise": 0}
    matched: list[float] = []
    for image_id, index in ctx.images:
        project.set_status(image_id, "done")
        stored = [m for m in project.list_masks(image_id) if m.source == "auto"]
        pred = np.asarray([decode_coco_rle(m.segmentation) for m in stored], bool)
        truth = _truth(ctx, index)
        if not len(pred):
            pred = np.zeros((0, *truth.shape[1:]), bool)
        m = match_mask_sets(pred, truth, cfg.iou_target)
        for key in totals:
            totals[key] += m[key]
        matched += m["matched_ious"]
    n = len(ctx.images)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    ctx.row.update(
        {
            "masks": totals["auto"],
            "masks_per_image": totals["auto"] / n if n else None,
            "seconds_per_image": None,
            "miou_final": None,
            "auto": {
                "preset": cfg.auto_preset, **totals, **imported,
                "recall_50": ratio(totals["covered_50"], totals["true"]),
                "recall_target": ratio(totals["covered_target"], totals["true"]),
                "precision": ratio(totals["precise"], totals["auto"]),
                "miou_matched": float(np.mean(matched)) if matched else None,
                "generator_seconds": run["seconds"],
            },
        }
    )  # fmt: skip
    return []


#: The built-in hooks of the non-manual round kinds.
STAGE_HOOKS = {"prefill": prefill_round, "auto": auto_round}
