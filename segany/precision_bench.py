"""Measuring a lower precision against fp32 for one model: accuracy on a dataset and the image
encoder's speed on this CPU, for the reports of :mod:`segany.precision_check`
(``segany bench-precision``)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .build import set_precision
from .masks import mask_iou, match_mask_sets
from .precision_check import passes


def _copy_in(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    return set_precision(copy.deepcopy(model), precision)


def measure_accuracy(
    model: torch.nn.Module,
    dataset: Any,
    precision: str = "int8",
    *,
    max_images: int | None = 50,
    amg_images: int = 3,
    amg_settings: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``precision`` against fp32 for ``model`` (an fp32 :class:`segany.modeling.Sam`, left
    unchanged) on ``dataset`` (``len`` and ``[i]`` with ``.image`` ``(H, W, 3)`` uint8 RGB and
    ``.masks`` ``(K, H, W)`` bool, e.g. :func:`segany.data.datasets.open_dataset`).

    Returns a dict: ``mask_iou_mean`` / ``mask_iou_min`` (IoU between the two precisions'
    masks for the same single-point prompt, the point farthest inside each ground-truth mask,
    all 3 multimask outputs), ``score_error_mean`` / ``score_error_max`` (|predicted IoU
    difference|), ``miou_1pt`` / ``miou_5pt`` (``{"fp32", precision}``, the ``top`` track of
    :func:`segany.eval.evaluate_interactive`), ``miou_drop_1pt`` / ``miou_drop_5pt`` (fp32 minus
    the other), ``amg`` (the automatic generator, with the official default knobs updated by
    ``amg_settings``, on the first ``amg_images`` images: the settings, masks per image,
    ``recall`` and ``precision`` of the other set against fp32's at IoU 0.5, ``recall_90`` at
    0.9, ``matched_iou``), the counts, and ``passes`` (:data:`segany.precision_check.BOUNDS`).
    """
    from .amg import SamAutomaticMaskGenerator
    from .eval.interactive import evaluate_interactive, first_click
    from .predictor import SamPredictor

    if len(dataset) == 0:
        raise ValueError("the dataset has no images")
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    other = _copy_in(model, precision)
    ref_p, other_p = SamPredictor(model), SamPredictor(other)
    ious: list[float] = []
    score_err: list[float] = []
    prompts = 0
    for i in range(n):
        sample = dataset[i]
        gts = [m for m in np.asarray(sample.masks, bool) if m.any()]
        if not gts:
            continue
        ref_p.set_image(sample.image)
        other_p.set_image(sample.image)
        for gt in gts:
            x, y = first_click(gt)
            kw = {"point_coords": np.array([[x, y]]), "point_labels": np.array([1])}
            prompts += 1
            m_ref, s_ref, _ = ref_p.predict(**kw, multimask_output=True)
            m_oth, s_oth, _ = other_p.predict(**kw, multimask_output=True)
            ious.extend(float(v) for v in mask_iou(m_oth, m_ref))
            score_err.extend(float(v) for v in np.abs(s_oth - s_ref))
    if not ious:
        raise ValueError("the dataset has no non-empty ground-truth mask")
    miou = {}
    for name, pred in (("fp32", ref_p), (precision, other_p)):
        res = evaluate_interactive(pred, dataset, clicks=(1, 5), max_images=n, progress=progress)
        miou[name] = res.miou_top
    amg = {"images": 0, "fp32_masks": 0, "other_masks": 0, "matched_50": 0, "matched_90": 0,
           "precise_50": 0, "matched_ious": []}  # fmt: skip
    settings = dict(amg_settings or {})
    gens = [SamAutomaticMaskGenerator(m, **settings) for m in (model, other)]
    for i in range(min(amg_images, n)):
        image = dataset[i].image
        ref_set, other_set = (
            np.array([r["segmentation"] for r in g.generate(image)], bool).reshape(
                -1, *image.shape[:2]
            )
            for g in gens
        )
        match = match_mask_sets(other_set, ref_set, 0.9)
        amg["images"] += 1
        amg["fp32_masks"] += match["true"]
        amg["other_masks"] += match["auto"]
        amg["matched_50"] += match["covered_50"]
        amg["matched_90"] += match["covered_target"]
        amg["precise_50"] += match["precise"]
        amg["matched_ious"].extend(match["matched_ious"])

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    amg_out = {
        "settings": settings,
        "images": amg["images"],
        "fp32_masks_per_image": ratio(amg["fp32_masks"], amg["images"]),
        "other_masks_per_image": ratio(amg["other_masks"], amg["images"]),
        "recall": ratio(amg["matched_50"], amg["fp32_masks"]),
        "recall_90": ratio(amg["matched_90"], amg["fp32_masks"]),
        "precision": ratio(amg["precise_50"], amg["other_masks"]),
        "matched_iou": float(np.mean(amg["matched_ious"])) if amg["matched_ious"] else None,
    }
    out = {
        "precision": precision,
        "images": n,
        "prompts": prompts,
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_min": float(np.min(ious)),
        "score_error_mean": float(np.mean(score_err)),
        "score_error_max": float(np.max(score_err)),
        "miou_1pt": {k: float(v[0]) for k, v in miou.items()},
        "miou_5pt": {k: float(v[1]) for k, v in miou.items()},
        "miou_drop_1pt": float(miou["fp32"][0] - miou[precision][0]),
        "miou_drop_5pt": float(miou["fp32"][1] - miou[precision][1]),
        "amg": amg_out,
    }
    out["passes"] = passes(out)
    return out


def measure_speed(
    model: torch.nn.Module, precisions: Sequence[str] = ("int8",), *, repeats: int = 3
) -> dict[str, Any]:
    """The image encoder's time (median of ``repeats`` after one warm-up, one ``img_size``
    square input) in fp32 and in each of ``precisions``, on this CPU: ``{"fp32": {"seconds"},
    name: {"seconds", "speedup"}}``. ``model`` is an fp32 model on the CPU, left unchanged."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    size = model.image_encoder.img_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def encoder_seconds(m: torch.nn.Module) -> float:
        with torch.inference_mode():
            m.image_encoder(x.to(m.dtype))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                m.image_encoder(x.to(m.dtype))
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    fp32 = encoder_seconds(model)
    out: dict[str, Any] = {"fp32": {"seconds": fp32}}
    for name in precisions:
        seconds = encoder_seconds(_copy_in(model, name))
        out[name] = {"seconds": seconds, "speedup": fp32 / seconds}
    return out
