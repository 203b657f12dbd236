"""Prompt validation shared by :class:`segany.SamPredictor` and the torch-free
:class:`segany.runtime.OnnxPredictor`: one set of rules and messages for both.

Prompts are in the **original frame**: points ``(x, y)`` pixels in ``[0, W] x [0, H]``, boxes
XYXY in the same frame, mask inputs low-res logits ``(1, L, L)``. Labels: 1 foreground,
0 background, -1 padding, 2/3 box corners. numpy only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POINT_LABELS = (-1, 0, 1, 2, 3)


@dataclass
class PromptSet:
    """One prompt set in the original frame: ``coords (N, 2)``, ``labels (N,)``, ``box (4,)``,
    ``mask (1, L, L)``, ``text (D,)`` float32 text embedding; absent parts are None."""

    coords: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    mask: np.ndarray | None
    text: np.ndarray | None = None


def _numeric(value: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, if the caller has torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric array-like: {e}") from None


def _split_points(point_coords: Any, point_labels: Any) -> tuple[list, list, bool]:
    """Point prompts as lists of ``(N_i, 2)`` coords and ``(N_i,)`` labels, and whether the
    caller gave several sets."""
    is_list = (
        isinstance(point_coords, (list, tuple))
        and len(point_coords) > 0
        and np.ndim(point_coords[0]) == 2
    )
    if is_list:
        coords = [_numeric(c, "point_coords") for c in point_coords]
        if not isinstance(point_labels, (list, tuple)) or len(point_labels) != len(coords):
            raise ValueError("point_labels must be a list with one entry per point_coords entry")
        labels = [_numeric(v, "point_labels") for v in point_labels]
        return coords, labels, True
    c = _numeric(point_coords, "point_coords")
    v = _numeric(point_labels, "point_labels")
    if c.ndim == 3:
        if v.ndim != 2 or v.shape[0] != c.shape[0]:
            raise ValueError(
                f"point_labels must be (B, N) for point_coords {c.shape}; got {v.shape}"
            )
        return list(c), list(v), True
    return [c], [v], False


def _check_points(c: np.ndarray, v: np.ndarray, h: int, w: int) -> None:
    if c.ndim != 2 or c.shape[-1] != 2:
        raise ValueError(f"point_coords must have shape (N, 2) (x, y); got {c.shape}")
    if len(c) == 0:
        raise ValueError("point_coords has no points; pass None to give no points")
    if v.shape != (len(c),):
        raise ValueError(
            f"point_labels must have shape ({len(c)},) to match point_coords; got {v.shape}"
        )
    if not np.isfinite(c).all():
        raise ValueError("point_coords contains NaN or infinite values")
    x, y = c[:, 0], c[:, 1]
    if x.min() < 0 or x.max() > w or y.min() < 0 or y.max() > h:
        raise ValueError(
            f"point_coords outside the image: (x, y) must lie in [0, {w}] x [0, {h}] "
            f"(image is {w}x{h}); got x in [{x.min():g}, {x.max():g}], "
            f"y in [{y.min():g}, {y.max():g}]"
        )
    if not np.isin(v, POINT_LABELS).all():
        raise ValueError(f"point_labels must be in {POINT_LABELS}; got {np.unique(v)}")


def parse_prompts(
    point_coords: Any,
    point_labels: Any,
    box: Any,
    mask_input: Any,
    original_size: tuple[int, int],
    mask_size: tuple[int, int],
    text_embedding: Any = None,
    text_dim: int | None = None,
) -> tuple[list[PromptSet], bool]:
    """Validate prompts in the original frame (the rules of ``SamPredictor.predict``) and split
    them into prompt sets; also returns whether the caller asked for a batch (leading B axis in
    the outputs). ``text_embedding`` is ``(D,)`` or ``(B, D)`` for a model whose text path
    takes ``text_dim``-wide embeddings (None: the model has none). Raises ValueError with what
    is wrong and what is allowed."""
    h, w = original_size
    if point_coords is None and point_labels is not None:
        raise ValueError("point_labels given without point_coords")
    if point_coords is not None and point_labels is None:
        raise ValueError("point_coords given without point_labels")
    if point_coords is None and box is None and mask_input is None and text_embedding is None:
        raise ValueError("no prompt given: pass point_coords/point_labels, box, mask_input or text")
    parts: dict[str, list] = {}
    batched = False
    if text_embedding is not None:
        if text_dim is None:
            raise ValueError(
                "this model has no text path: text prompts need a model trained with text "
                "(e.g. the bundled segany_tiny, or one trained with text_prompts = true)"
            )
        t = _numeric(text_embedding, "text_embedding", np.float32)
        t = t[None] if t.ndim == 1 else t
        if t.ndim != 2 or t.shape[1] != text_dim or len(t) == 0:
            raise ValueError(
                f"text_embedding must have shape ({text_dim},) or (B, {text_dim}); got "
                f"{np.shape(text_embedding)}"
            )
        if not np.isfinite(t).all() or (np.linalg.norm(t, axis=1) == 0).any():
            raise ValueError("text_embedding must be finite and non-zero")
        parts["text"] = list(t)
        batched = len(t) > 1
    if point_coords is not None:
        coords, labels, several = _split_points(point_coords, point_labels)
        for c, v in zip(coords, labels, strict=True):
            _check_points(c, v, h, w)
        parts["coords"], parts["labels"] = coords, labels
        batched = batched or several
    if box is not None:
        b = _numeric(box, "box")
        b = b[None] if b.ndim == 1 else b
        if b.ndim != 2 or b.shape[1] != 4 or len(b) == 0:
            raise ValueError(f"box must have shape (4,) or (B, 4) as XYXY; got {np.shape(box)}")
        if not np.isfinite(b).all():
            raise ValueError("box contains NaN or infinite values")
        if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise ValueError("box must be XYXY with x1 >= x0 and y1 >= y0")
        xs, ys = b[:, [0, 2]], b[:, [1, 3]]
        if xs.min() < 0 or xs.max() > w or ys.min() < 0 or ys.max() > h:
            raise ValueError(
                f"box outside the image: coordinates must lie in [0, {w}] x [0, {h}]; clip "
                f"boxes to the image first (e.g. np.clip)"
            )
        parts["box"] = list(b)
        batched = batched or len(b) > 1
    if mask_input is not None:
        m = _numeric(mask_input, "mask_input", np.float32)
        m = m[None] if m.ndim == 3 else m
        lh, lw = mask_size
        if m.ndim != 4 or m.shape[1:] != (1, lh, lw):
            raise ValueError(
                f"mask_input must have shape (1, {lh}, {lw}) (low-res logits from a previous "
                f"call) or (B, 1, {lh}, {lw}); got {np.shape(mask_input)}"
            )
        if not np.isfinite(m).all():
            raise ValueError("mask_input contains NaN or infinite values")
        parts["mask"] = list(m)
        batched = batched or len(m) > 1
    sizes = [len(parts[k]) for k in ("coords", "box", "mask", "text") if k in parts]
    n = max(sizes)
    if any(s not in (1, n) for s in sizes):
        raise ValueError(f"prompt batch sizes disagree: {sizes} (each must be 1 or {n})")

    def pick(key: str, i: int) -> np.ndarray | None:
        values = parts.get(key)
        return None if values is None else values[i if len(values) > 1 else 0]

    sets = [
        PromptSet(
            pick("coords", i), pick("labels", i), pick("box", i), pick("mask", i), pick("text", i)
        )
        for i in range(n)
    ]
    return sets, batched
