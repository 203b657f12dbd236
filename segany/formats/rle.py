"""Binary masks <-> run-length encodings (RLE), exactly as ``pycocotools`` writes and reads them.

Two RLE flavours are used by COCO, SA-1B and the official ``segment-anything`` code. Both
describe a ``(H, W)`` mask flattened in **column-major (Fortran) order**: down the first
column (x = 0), then down the second, and so on. ``counts`` alternates run lengths of 0s and
1s and always **starts with a run of 0s**, so a mask whose pixel ``(0, 0)`` is 1 starts with a
``0`` count.

* **uncompressed RLE** ``{"size": [H, W], "counts": [int, ...]}``: the run lengths as a list,
  the format of the official ``mask_to_rle_pytorch`` and one that
  ``pycocotools.mask.frPyObjects`` accepts;
* **COCO (compressed) RLE** ``{"size": [H, W], "counts": str}``: the same runs in pycocotools'
  LEB128-like ASCII string (runs after the third are stored as the difference to the run two
  before). Here ``counts`` is a ``str`` (JSON-serialisable); pycocotools itself returns
  ``bytes``. Every function here accepts either.

Masks are ``(H, W)`` or ``(N, H, W)`` arrays of bool or integer dtype (non-zero = inside);
decoded masks are bool. Boxes are **XYWH** ``[x, y, w, h]`` in pixels with pycocotools'
convention (a box ``[0, 0, 1, 1]`` covers exactly pixel ``(0, 0)``).

Only numpy and pycocotools are used (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "RLE",
    "coco_to_uncompressed_rle",
    "decode_coco_rle",
    "decode_uncompressed_rle",
    "encode_coco_rle",
    "encode_uncompressed_rle",
    "is_coco_rle",
    "is_uncompressed_rle",
    "rle_area",
    "rle_to_bbox",
    "uncompressed_to_coco_rle",
]

#: An RLE dict: ``{"size": [H, W], "counts": str | bytes | list[int]}``.
RLE = dict[str, Any]


# --------------------------------------------------------------------------- validation


def _as_mask_stack(masks: Any, what: str = "masks") -> tuple[np.ndarray, bool]:
    """``masks`` as an ``(N, H, W)`` bool array (a view when possible) and whether the input
    was a single ``(H, W)`` mask."""
    m = np.asarray(masks)
    if m.ndim not in (2, 3):
        raise ValueError(f"{what} must be a (H, W) or (N, H, W) array; got shape {m.shape}")
    if m.shape[-2] == 0 or m.shape[-1] == 0:
        raise ValueError(f"{what} must have non-empty H and W; got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(
                f"{what} must be bool or integer (non-zero = inside); got dtype {m.dtype}"
                " (threshold float masks or logits first, e.g. logits > 0)"
            )
        m = m != 0
    single = m.ndim == 2
    return (m[None] if single else m), single


def _check_size(rle: Mapping[str, Any]) -> tuple[int, int]:
    size = rle.get("size")
    if (
        not isinstance(size, Sequence)
        or isinstance(size, str | bytes)
        or len(size) != 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size)
        or size[0] <= 0
        or size[1] <= 0
    ):
        raise ValueError(f"RLE 'size' must be [H, W] with positive integers; got {size!r}")
    return int(size[0]), int(size[1])


def _check_rle_dict(rle: Any) -> tuple[int, int, Any]:
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        keys = sorted(rle) if isinstance(rle, Mapping) else type(rle).__name__
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts'; got {keys}")
    h, w = _check_size(rle)
    return h, w, rle["counts"]


def is_uncompressed_rle(obj: Any) -> bool:
    """True for a dict with ``size`` and a list/array of integer ``counts`` (not validated)."""
    return (
        isinstance(obj, Mapping)
        and "size" in obj
        and isinstance(obj.get("counts"), list | tuple | np.ndarray)
    )


def is_coco_rle(obj: Any) -> bool:
    """True for a dict with ``size`` and ``str``/``bytes`` ``counts`` (not validated)."""
    return isinstance(obj, Mapping) and "size" in obj and isinstance(obj.get("counts"), str | bytes)


def _counts_bytes(counts: Any) -> bytes:
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("COCO RLE counts must be an ASCII string") from None
    if isinstance(counts, bytes | bytearray):
        return bytes(counts)
    raise ValueError(
        f"COCO RLE counts must be str or bytes; got {type(counts).__name__} "
        "(a list of run lengths is an uncompressed RLE)"
    )


def _parse_coco_counts(counts: bytes) -> np.ndarray:
    """Run lengths (int64) of a pycocotools counts string, vectorised with numpy.

    Mirrors ``rleFrString`` in pycocotools' ``maskApi.c``: each value is stored in 5-bit
    groups (low bits first, ``0x20`` = "more groups follow", ``0x10`` in the last group = sign),
    offset by 48 into printable ASCII; values from index 3 on are deltas to the run two before.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        raise ValueError("COCO RLE counts string is empty")
    if c.min() < 0 or c.max() > 63:
        raise ValueError("COCO RLE counts contain characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("COCO RLE counts string is truncated (its last group says 'more')")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise ValueError("COCO RLE counts contain a value too large to be a run length")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # runs[3] = v3 + runs[1], ...
    runs[2::2] = np.cumsum(values[2::2])  # runs[4] = v4 + runs[2], ... (runs[2] = v2)
    return runs


def _check_runs(runs: np.ndarray, h: int, w: int, kind: str) -> None:
    if runs.size and runs.min() < 0:
        raise ValueError(f"{kind} RLE has a negative run length")
    total = int(runs.sum())
    if total != h * w:
        raise ValueError(
            f"{kind} RLE run lengths sum to {total}, but size {[h, w]} needs H*W = {h * w}"
        )


def checked_coco_rle(rle: Any) -> tuple[dict[str, Any], np.ndarray]:
    """A validated COCO RLE as pycocotools wants it (``{"size": [H, W], "counts": bytes}``) and
    its run lengths (int64); ValueError naming what is wrong otherwise."""
    h, w, counts = _check_rle_dict(rle)
    data = _counts_bytes(counts)
    runs = _parse_coco_counts(data)
    _check_runs(runs, h, w, "COCO")
    return {"size": [h, w], "counts": data}, runs


def _uncompressed_runs(rle: Any) -> tuple[int, int, np.ndarray]:
    h, w, counts = _check_rle_dict(rle)
    if isinstance(counts, str | bytes) or not isinstance(counts, Sequence | np.ndarray):
        raise ValueError(
            f"uncompressed RLE counts must be a list of ints; got {type(counts).__name__}"
        )
    runs = np.asarray(counts)
    if runs.ndim != 1 or (runs.size and not np.issubdtype(runs.dtype, np.integer)):
        raise ValueError("uncompressed RLE counts must be a flat list of integers")
    runs = runs.astype(np.int64, copy=False)
    _check_runs(runs, h, w, "uncompressed")
    return h, w, runs


def _canonical_runs(runs: np.ndarray) -> list[int]:
    """Runs with empty runs removed and equal neighbours merged, starting with the 0s run (so
    a mask starting with 1 starts with a ``0``): the unique encoding of the mask."""
    values = np.arange(runs.size) % 2
    keep = runs > 0
    runs, values = runs[keep], values[keep]
    if runs.size == 0:
        return []
    group_starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    merged = np.add.reduceat(runs, group_starts).tolist()
    return [0, *merged] if values[0] == 1 else merged


# --------------------------------------------------------------------------- COCO RLE


def encode_coco_rle(masks: np.ndarray) -> RLE | list[RLE]:
    """Encode masks as COCO compressed RLE.

    Args:
        masks: ``(N, H, W)`` or ``(H, W)`` bool/integer array (non-zero = inside).

    Returns:
        For ``(N, H, W)``, a list of ``N`` dicts ``{"size": [H, W], "counts": str}`` (an empty
        list when ``N == 0``); for ``(H, W)``, one dict. ``counts`` is byte-for-byte what
        ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))`` returns, decoded
        to ``str``.
    """
    stack, single = _as_mask_stack(masks)
    n, h, w = stack.shape
    if n == 0:
        return []
    # (H, W, N) in Fortran order is (N, W, H) in C order: one transposing copy, unless the
    # masks already are a transposed view of (N, W, H) C-ordered data (then none).
    fortran = np.asarray(stack.view(np.uint8).transpose(1, 2, 0), order="F")
    encoded = mask_utils.encode(fortran)
    out = [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in encoded]
    return out[0] if single else out


def decode_coco_rle(rles: RLE | Sequence[RLE]) -> np.ndarray:
    """Decode COCO RLE(s) (``counts`` as ``str`` or ``bytes``), exactly as
    ``pycocotools.mask.decode`` does, but validated first (pycocotools silently returns garbage
    for run lengths that do not add up to ``H*W``) and vectorised over all masks.

    Args:
        rles: one dict, or a non-empty list of dicts that all have the same ``size``.

    Returns:
        ``(H, W)`` bool for one dict, ``(N, H, W)`` bool for a list (C-contiguous).

    Raises:
        ValueError: malformed ``size``/``counts``, run lengths that do not add up to ``H*W``,
            an empty list, or differing sizes in a list.
    """
    if isinstance(rles, Mapping):
        checked, runs = checked_coco_rle(rles)
        h, w = checked["size"]
        return _runs_to_masks([runs], h, w)[0]
    if isinstance(rles, str | bytes) or not isinstance(rles, Sequence):
        raise ValueError(f"expected an RLE dict or a list of them; got {type(rles).__name__}")
    if len(rles) == 0:
        raise ValueError("cannot decode an empty list of RLEs (the mask size is unknown)")
    checked = [checked_coco_rle(r) for r in rles]
    sizes = {tuple(c["size"]) for c, _ in checked}
    if len(sizes) > 1:
        raise ValueError(f"all RLEs in a list must have the same size; got {sorted(sizes)}")
    h, w = checked[0][0]["size"]
    return _runs_to_masks([runs for _, runs in checked], h, w)


def _runs_to_masks(runs: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """``(N, H, W)`` bool masks from validated run lengths (each summing to ``H*W``)."""
    values = np.concatenate([np.arange(r.size) % 2 for r in runs]).astype(bool)
    flat = np.repeat(values, np.concatenate(runs))
    # column-major per mask: (N, W, H) -> (N, H, W)
    return np.ascontiguousarray(flat.reshape(len(runs), w, h).transpose(0, 2, 1))


# --------------------------------------------------------------------------- uncompressed RLE


def encode_uncompressed_rle(masks: np.ndarray) -> RLE | list[RLE]:
    """Encode masks as uncompressed RLE, the official ``mask_to_rle_pytorch`` format.

    Args:
        masks: ``(N, H, W)`` or ``(H, W)`` bool/integer array (non-zero = inside).

    Returns:
        For ``(N, H, W)`` a list of ``N`` dicts, for ``(H, W)`` one dict:
        ``{"size": [H, W], "counts": [int, ...]}`` with the run lengths in column-major order,
        starting with the run of 0s (``0`` when the mask starts with 1). Accepted by
        ``pycocotools.mask.frPyObjects(rle, H, W)``.
    """
    stack, single = _as_mask_stack(masks)
    n, h, w = stack.shape
    if n == 0:
        return []
    hw = h * w
    flat = stack.transpose(0, 2, 1).reshape(n, hw)  # column-major order per mask
    # boundaries[i, j]: a run of mask i starts (or, for j == hw, ends) at flat index j
    boundaries = np.empty((n, hw + 1), dtype=bool)
    boundaries[:, 0] = True
    boundaries[:, hw] = True
    np.not_equal(flat[:, 1:], flat[:, :-1], out=boundaries[:, 1:hw])
    rows, cols = np.nonzero(boundaries)
    runs = np.diff(cols)[rows[1:] == rows[:-1]]  # drop the jumps between masks
    runs_per_mask = np.bincount(rows, minlength=n) - 1
    per_mask = np.split(runs, np.cumsum(runs_per_mask)[:-1])
    starts_with_one = flat[:, 0].tolist()
    out = [
        {"size": [h, w], "counts": ([0] if first else []) + r.tolist()}
        for first, r in zip(starts_with_one, per_mask, strict=True)
    ]
    return out[0] if single else out


def decode_uncompressed_rle(rle: RLE) -> np.ndarray:
    """Decode one uncompressed RLE (``counts`` a list of run lengths) to a ``(H, W)`` bool
    mask. Raises ValueError when the runs do not add up to ``H*W`` or are negative."""
    h, w, runs = _uncompressed_runs(rle)
    return _runs_to_masks([runs], h, w)[0]


def uncompressed_to_coco_rle(rle: RLE) -> RLE:
    """Uncompressed RLE -> COCO RLE (``counts`` as ``str``) via
    ``pycocotools.mask.frPyObjects``; same result as :func:`encode_coco_rle` on the mask."""
    h, w, runs = _uncompressed_runs(rle)
    coco = mask_utils.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)
    return {"size": [h, w], "counts": coco["counts"].decode("ascii")}


def coco_to_uncompressed_rle(rle: RLE) -> RLE:
    """COCO RLE (``str``/``bytes`` counts) -> uncompressed RLE, parsed directly from the
    counts string (no mask is materialised). The result is canonical: equal to
    :func:`encode_uncompressed_rle` of the decoded mask."""
    checked, runs = checked_coco_rle(rle)
    return {"size": list(checked["size"]), "counts": _canonical_runs(runs)}


# --------------------------------------------------------------------------- measures


def rle_area(rle: RLE) -> int:
    """Number of pixels inside the mask. COCO RLE: ``pycocotools.mask.area``; uncompressed RLE:
    the sum of the odd-indexed counts (the runs of 1s)."""
    if is_uncompressed_rle(rle):
        _, _, runs = _uncompressed_runs(rle)
        return int(runs[1::2].sum())
    checked, _ = checked_coco_rle(rle)
    return int(mask_utils.area(checked))


def rle_to_bbox(rle: RLE) -> list[float]:
    """Bounding box ``[x, y, w, h]`` (XYWH, pixel edges: a single pixel at ``(x, y)`` gives
    ``[x, y, 1, 1]``) with ``pycocotools.mask.toBbox`` semantics, for either RLE kind; an
    empty mask gives ``[0, 0, 0, 0]``. This is the tight box of the mask's pixels; the
    official ``segment-anything`` generator's boxes are one pixel narrower
    (``w = x_max - x_min``).
    """
    if is_uncompressed_rle(rle):
        h, w, runs = _uncompressed_runs(rle)
        checked = mask_utils.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)
    else:
        checked, _ = checked_coco_rle(rle)
    return [float(v) for v in mask_utils.toBbox(checked)]
