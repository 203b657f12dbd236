"""Text-prompt evaluation on captioned procedural scenes (``procedural-text:N``).

For every object a caption singles out (:func:`segany.data.captions.caption_objects`, the
fewest attributes, no randomness), four prompts are decoded with ``multimask_output=True``
and the mask of highest predicted IoU is kept:

* ``text``: the text encoder's embedding of the caption alone;
* ``text+point``: that embedding plus click 1 of the point protocol (the pixel farthest from
  the mask boundary, :func:`segany.eval.interactive.first_click`);
* ``point``: click 1 alone (the baseline ``text+point`` must not fall below);
* ``region``: the encoder's embedding of the ground-truth region crop (the prompt the model
  was trained with; an upper bound for ``text``).

Retrieval: within each scene, a caption's text embedding against the region embeddings of all
the scene's objects; top-1 is right when the captioned object scores highest. Every figure is
reported for seen attribute combinations and for the held-out ones
(:data:`segany.data.captions.HELD_OUT_COMBINATIONS`) separately.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.scenes import OBJECT
from ..masks import mask_iou
from .interactive import first_click

PROMPTS = ("text", "text+point", "point", "region")
SPLITS = ("seen", "held_out")


@dataclass
class TextResult:
    """Outcome of :func:`evaluate_text`.

    Attributes:
        miou: ``{split: {prompt: mIoU}}`` for ``split`` in :data:`SPLITS` and ``prompt`` in
            :data:`PROMPTS` (NaN where a split has no caption).
        retrieval_top1: ``{split: accuracy}``.
        counts: ``{split: number of captions}``.
        records: one dict per caption: ``image``, ``index``, ``text``, ``held_out``, an IoU
            per prompt, and ``retrieved`` (bool).
        seconds: wall time.
    """

    miou: dict[str, dict[str, float]]
    retrieval_top1: dict[str, float]
    counts: dict[str, int]
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "retrieval_top1": self.retrieval_top1,
            "counts": self.counts,
            "seconds": self.seconds,
        }

    def table(self) -> str:
        """A Markdown table: one row per split, mIoU per prompt and retrieval top-1."""
        head = "| split | captions | " + " | ".join(PROMPTS) + " | retrieval top-1 |"
        rows = [head, "|" + "---|" * (len(PROMPTS) + 3)]
        for s in SPLITS:
            vals = " | ".join(f"{self.miou[s][p]:.3f}" for p in PROMPTS)
            rows.append(f"| {s} | {self.counts[s]} | {vals} | {self.retrieval_top1[s]:.3f} |")
        return "\n".join(rows)


def _top(predictor: Any, gt: np.ndarray, **prompt: Any) -> float:
    masks, scores, _ = predictor.predict(multimask_output=True, **prompt)
    return float(mask_iou(np.asarray(masks)[int(np.argmax(scores))], gt))


def evaluate_text(
    predictor: Any,
    dataset: Any,
    encoder: Any,
    *,
    max_images: int | None = None,
    progress: bool = False,
) -> TextResult:
    """Evaluate text prompts (see the module docstring).

    Args:
        predictor: a :class:`segany.SamPredictor` whose model has a text path.
        dataset: a captioned procedural dataset (``open_dataset("procedural-text:N")``).
        encoder: the :class:`segany.text.TextEncoder` the model was trained with.
        max_images: evaluate only the first ``max_images`` scenes.
        progress: show a progress bar.
    """
    from ..data.captions import caption_objects

    if not callable(getattr(dataset, "scene", None)) or not dataset.scenes.config.palette:
        raise ValueError(
            "text evaluation needs captioned scenes: a 'procedural-text:N[:SEED]' dataset "
            "(or a procedural dict with palette true)"
        )
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n <= 0:
        raise ValueError(f"max_images must be positive; got {max_images}")
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="eval text", unit="image")
    for i in it:
        scene = dataset.scene(i)
        caps = caption_objects(scene)
        if not caps:
            continue
        predictor.set_image(scene.image)
        objects = [k for k in range(len(scene.masks)) if scene.levels[k] == OBJECT]
        with torch.no_grad():
            texts = encoder.encode_text([c.text for c in caps]).float()
            regions = encoder.encode_regions(scene.image, scene.masks[objects]).float()
        sims = texts @ regions.T  # (C, K)
        for c, t, sim in zip(caps, texts.numpy(), sims, strict=True):
            gt = scene.masks[c.index]
            x, y = first_click(gt)
            pt = {"point_coords": np.array([[x, y]], np.float64), "point_labels": np.array([1])}
            region = regions[objects.index(c.index)].numpy()
            records.append(
                {
                    "image": i,
                    "index": c.index,
                    "text": c.text,
                    "held_out": c.held_out,
                    "iou_text": _top(predictor, gt, text_embedding=t),
                    "iou_text+point": _top(predictor, gt, text_embedding=t, **pt),
                    "iou_point": _top(predictor, gt, **pt),
                    "iou_region": _top(predictor, gt, text_embedding=region),
                    "retrieved": objects[int(sim.argmax())] == c.index,
                }
            )
    miou, top1, counts = {}, {}, {}
    for s in SPLITS:
        rows = [r for r in records if r["held_out"] == (s == "held_out")]
        counts[s] = len(rows)
        miou[s] = {
            p: float(np.mean([r[f"iou_{p}"] for r in rows])) if rows else float("nan")
            for p in PROMPTS
        }
        top1[s] = float(np.mean([r["retrieved"] for r in rows])) if rows else float("nan")
    return TextResult(miou, top1, counts, records, time.perf_counter() - t0)


def text_figure(
    predictor: Any, image: np.ndarray, phrases: list[str], *, scale: int = 2
) -> np.ndarray:
    """One panel per phrase: ``image (H, W, 3) uint8 RGB`` with the top-scored mask of
    ``predictor.predict(text=phrase)`` drawn over it (upscaled ``scale`` times, nearest) and
    the phrase written under it. Returns ``(scale * H + 28, len(phrases) * scale * W, 3)``
    uint8 RGB. ``predictor`` needs a text encoder (``predictor.text_encoder``)."""
    from PIL import Image, ImageDraw

    from ..viz import overlay_masks

    if not phrases:
        raise ValueError("text_figure needs at least one phrase")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    predictor.set_image(image)
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    h, w = big.shape[:2]
    panels = []
    for phrase in phrases:
        masks, scores, _ = predictor.predict(text=phrase, multimask_output=True)
        best = np.asarray(masks)[int(np.argmax(scores))]
        best = np.repeat(np.repeat(best, scale, axis=0), scale, axis=1)
        panel = overlay_masks(big, np.stack([best]), alpha=0.55)
        canvas = Image.new("RGB", (w, h + 28), (255, 255, 255))
        canvas.paste(Image.fromarray(panel), (0, 0))
        ImageDraw.Draw(canvas).text((6, h + 8), f'"{phrase}"', fill=(0, 0, 0))
        panels.append(np.asarray(canvas))
    return np.concatenate(panels, axis=1)
