"""Captions that pick out one object of a generated scene: "the red striped ellipse".

A caption names the fewest attributes (colour, texture, shape, size) that make the object
unique among the scene's objects; where even all four leave a tie, the leftmost / rightmost /
topmost / bottommost of the tied objects gets a position ("on the left"). Objects that no
caption singles out get none. Captions are for objects (level 0) of scenes generated with
``SceneConfig(palette=True)``; parts are not captioned.

Hold-out combinations (:data:`HELD_OUT_COMBINATIONS`) are (colour, shape) pairs that a training
split never draws (``SceneConfig(excluded_combinations=...)``), so evaluation can measure text
prompts on phrases the models never saw.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .scenes import OBJECT, PALETTE, SHAPES, TEXTURES, Scene

ATTRIBUTES = ("color", "texture", "shape", "size")
TEXTURE_WORDS = {
    "solid": "plain",
    "stripes": "striped",
    "checker": "checkered",
    "gradient": "shaded",
    "spots": "spotted",
    "noise": "mottled",
}
assert set(TEXTURE_WORDS) == set(TEXTURES)
SIZE_WORDS = ("small", "medium", "large")
POSITION_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# (colour, shape) pairs kept out of training splits, measured separately.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("blue", "star"),
    ("red", "ellipse"),
    ("green", "rectangle"),
    ("yellow", "polygon"),
    ("purple", "blob"),
)
# Every word a caption can contain, for closed-vocabulary text encoders.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["the", "object"]
        + list(PALETTE)
        + list(TEXTURE_WORDS.values())
        + list(SHAPES)
        + list(SIZE_WORDS)
        + " ".join(POSITION_WORDS.values()).split()
    )
)
# Object radius (fraction of the shorter side) boundaries between small / medium / large.
SIZE_EDGES = (0.13, 0.20)


@dataclass(frozen=True)
class Caption:
    """A phrase for one object.

    Attributes:
        index: the object's index into ``scene.masks``.
        text: the phrase, e.g. ``"the small blue star on the left"``.
        attributes: the attribute names it uses (a subset of :data:`ATTRIBUTES`, plus
            ``"position"`` when one was needed).
        held_out: whether the object's (colour, shape) is in the held-out combinations.
    """

    index: int
    text: str
    attributes: tuple[str, ...]
    held_out: bool


def size_word(radius: float) -> str:
    """``"small"``, ``"medium"`` or ``"large"`` for a radius (fraction of the shorter side)."""
    return SIZE_WORDS[int(np.searchsorted(SIZE_EDGES, radius, side="right"))]


def _values(scene: Scene, k: int) -> dict[str, str]:
    a = scene.attributes[k]
    if a.color is None:
        raise ValueError(
            "captions need named colours: generate the scene with SceneConfig(palette=True)"
        )
    return {"color": a.color, "texture": a.texture, "shape": a.shape, "size": size_word(a.radius)}


def phrase(values: dict[str, str], used: tuple[str, ...], position: str | None = None) -> str:
    """The words for ``used`` attributes of ``values``, in the order size, colour, texture,
    shape (``"object"`` when the shape is not used), then the position phrase."""
    words = ["the"]
    if "size" in used:
        words.append(values["size"])
    if "color" in used:
        words.append(values["color"])
    if "texture" in used:
        words.append(TEXTURE_WORDS[values["texture"]])
    words.append(values["shape"] if "shape" in used else "object")
    if position is not None:
        words.append(POSITION_WORDS[position])
    return " ".join(words)


def _position(scene: Scene, k: int, tied: list[int]) -> str | None:
    """Where ``k`` is extreme among ``tied`` (which includes it) by its visible centroid, with
    a margin of a tenth of the image; None if it is extreme nowhere."""
    h, w = scene.masks.shape[1:]
    cents = {}
    for j in tied:
        ys, xs = np.nonzero(scene.masks[j])
        cents[j] = (float(xs.mean()), float(ys.mean()))
    x, y = cents[k]
    others = [cents[j] for j in tied if j != k]
    margin_x, margin_y = 0.1 * w, 0.1 * h
    if all(x + margin_x < ox for ox, _ in others):
        return "left"
    if all(x - margin_x > ox for ox, _ in others):
        return "right"
    if all(y + margin_y < oy for _, oy in others):
        return "top"
    if all(y - margin_y > oy for _, oy in others):
        return "bottom"
    return None


def caption_objects(
    scene: Scene,
    rng: np.random.Generator | None = None,
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_COMBINATIONS,
    overspecify: float = 0.0,
) -> list[Caption]:
    """A caption for every object of ``scene`` that one can single out.

    Args:
        scene: a scene generated with ``SceneConfig(palette=True)``.
        rng: when given, ties between equally short attribute sets are broken at random (for
            varied training captions); otherwise the first in the order colour, texture,
            shape, size wins (colour + shape before colour + texture, and so on).
        held_out: the (colour, shape) pairs that mark a caption ``held_out``.
        overspecify: with ``rng``, the probability of adding each attribute the unique set
            does not need (people often name more than they must); 0 for the fewest.

    Returns:
        captions in mask order.
    """
    if not 0.0 <= overspecify <= 1.0:
        raise ValueError(f"overspecify must be a probability in [0, 1]; got {overspecify}")
    if len(scene.attributes) != len(scene.masks):
        raise ValueError("the scene records no attributes for its masks")
    objects = [k for k in range(len(scene.masks)) if scene.levels[k] == OBJECT]
    values = {k: _values(scene, k) for k in objects}
    out = []
    for k in objects:
        v = values[k]
        chosen: tuple[str, ...] | None = None
        for n in range(1, len(ATTRIBUTES) + 1):
            subsets = [
                s
                for s in itertools.combinations(ATTRIBUTES, n)
                if all(any(values[j][a] != v[a] for a in s) for j in objects if j != k)
            ]
            if subsets:
                chosen = subsets[int(rng.integers(len(subsets)))] if rng is not None else subsets[0]
                break
        position = None
        if chosen is None:
            tied = [j for j in objects if values[j] == v]
            position = _position(scene, k, tied)
            if position is None:
                continue
            chosen = ("color", "shape")
        if rng is not None and overspecify > 0:
            chosen = tuple(a for a in ATTRIBUTES if a in chosen or rng.random() < overspecify)
        text = phrase(v, chosen, position)
        used = chosen + (("position",) if position else ())
        out.append(Caption(k, text, used, (v["color"], v["shape"]) in held_out))
    return out
