"""Training the bundled small CLIP pair on captioned procedural scenes.

Pairs are ``(image, object mask, caption)`` from ``procedural-text`` scenes generated without
the held-out colour-shape combinations (:data:`segany.data.captions.HELD_OUT_COMBINATIONS`),
captions drawn with random tie-breaks and some over-specification, so the encoder never sees a
"blue star" and evaluation can measure composition.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.captions import HELD_OUT_COMBINATIONS, VOCABULARY, caption_objects, phrase
from ..data.scenes import ProceduralScenes, SceneConfig

#: Seed of the scenes the text encoder trains on (evaluation uses other seeds).
TEXT_ENCODER_SCENE_SEED = 11
#: The attributes a region has by itself (size and position depend on the rest of the scene).
INTRINSIC = ("color", "shape", "texture")
#: Chance of naming an attribute a training caption does not need.
OVERSPECIFY = 0.3
#: Chance that a training caption names a random non-empty subset of :data:`INTRINSIC` instead
#: (not always unique in its scene: its positives are every region it fits), so that shape and
#: texture, which unique captions rarely need beside colour, are named often. Off in the
#: default recipe: measured, it did not lift shape or texture retrieval.
SUBSET_PROBABILITY = 0.0
_SUBSETS = [s for n in range(1, 4) for s in itertools.combinations(INTRINSIC, n)]


@dataclass
class ScenePairs:
    """``pairs_fn`` for :func:`segany.text.train_small_clip`: every call returns the captioned
    objects of the next scene of a held-out-free procedural set (with ``subset_probability``,
    some captioned by a random subset of their intrinsic attributes, see
    :data:`SUBSET_PROBABILITY`)."""

    seed: int = TEXT_ENCODER_SCENE_SEED
    exclude_held_out: bool = True
    overspecify: float = OVERSPECIFY
    subset_probability: float = SUBSET_PROBABILITY
    _next: int = 0

    def __post_init__(self) -> None:
        excluded = HELD_OUT_COMBINATIONS if self.exclude_held_out else ()
        self.scenes = ProceduralScenes(
            2**31 - 1, self.seed, SceneConfig(palette=True, excluded_combinations=excluded)
        )

    def __call__(self, step: int, rng: np.random.Generator) -> list[tuple[Any, ...]]:
        """``(image, mask, caption, region attributes, caption attributes)`` per captioned
        object of the next scene; the caption's are ``None`` when it names a scene-relative
        attribute (size, position), see :func:`segany.text.attribute_positives`."""
        scene = self.scenes[self._next]
        self._next += 1
        caps = caption_objects(scene, rng, overspecify=self.overspecify)
        out = []
        for c in caps:
            a = scene.attributes[c.index]
            region = {k: getattr(a, k) for k in INTRINSIC}
            text, used = c.text, c.attributes
            if self.subset_probability > 0 and rng.random() < self.subset_probability:
                used = _SUBSETS[int(rng.integers(len(_SUBSETS)))]
                text = phrase(region, used)
            named = {k: region[k] for k in used} if set(used) <= set(INTRINSIC) else None
            out.append((scene.image, scene.masks[c.index], text, region, named))
        return out


def train_text_encoder(
    out: str | os.PathLike,
    *,
    steps: int = 1200,
    batch_size: int = 96,
    lr: float = 2e-3,
    seed: int = 0,
    embed_dim: int = 128,
    spatial_pool: int = 0,
    subset_probability: float = SUBSET_PROBABILITY,
    log_every: int = 100,
) -> dict[str, Any]:
    """Train a :class:`~segany.text.SmallClip` over :data:`VOCABULARY` on :class:`ScenePairs`
    and save it to ``out``; the defaults are the recipe (``spatial_pool``: see
    :class:`~segany.text.SmallClipConfig`; ``subset_probability``: see :class:`ScenePairs`).
    Returns ``{"steps", "seconds", "loss_first", "loss_last"}`` (mean of the first and last 50
    steps)."""
    from ..text import SmallClipConfig, save_small_clip, train_small_clip

    config = SmallClipConfig(embed_dim=embed_dim, spatial_pool=spatial_pool, words=VOCABULARY)
    t0 = time.perf_counter()
    model, history = train_small_clip(
        ScenePairs(subset_probability=subset_probability),
        config=config,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        log_every=log_every,
    )
    seconds = time.perf_counter() - t0
    save_small_clip(model, out)
    losses = [h["loss"] for h in history]
    k = min(50, len(losses))
    return {
        "steps": steps,
        "seconds": seconds,
        "loss_first": float(np.mean(losses[:k])),
        "loss_last": float(np.mean(losses[-k:])),
    }
