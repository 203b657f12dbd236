"""The BSDS500 boundary benchmark (ODS, OIS, AP, R50), computed as its reference code does.

For each of ``thresholds`` levels ``t_k = linspace(1/(K+1), 1 - 1/(K+1), K)`` the prediction
``E >= t_k`` is thinned (MATLAB's ``bwmorph(.., 'thin', Inf)``: :func:`thin`) and matched to
EACH annotator's boundary map with a one-to-one pixel correspondence
(:func:`correspond_pixels`, the benchmark's ``correspondPixels``) within
``max_dist * diagonal`` pixels. Per image and threshold (the benchmark's
``evaluation_bdry_image``):

* ``cntR`` = matched ground-truth pixels, summed over annotators; ``sumR`` = ground-truth
  pixels summed over annotators;
* ``cntP`` = predicted pixels matched to at least one annotator; ``sumP`` = predicted pixels.

Then (``collect_eval_bdry`` / the structured-edges toolbox's ``edgesEvalDir``): ODS is the best
F of the dataset-summed counts at one threshold (F interpolated linearly between neighbouring
thresholds, 100 steps); OIS sums each image's counts at its own best threshold; AP is the mean
of the precision interpolated at recall ``0:0.01:1`` (points outside the curve's recall range
count 0); R50 is the recall interpolated at precision 0.5 (at the highest precision when the
curve never reaches 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

__all__ = [
    "EdgeEvalResult",
    "ImageCounts",
    "correspond_pixels",
    "edge_counts",
    "evaluate_edges",
    "summarize_counts",
    "thin",
]

OUTLIER_FACTOR = 100.0  # the benchmark's outlier cost: 100 x the maximum distance
DENSE_LIMIT = 40_000_000  # a larger component (pred x gt pixels) uses the sparse solver


# ------------------------------------------------------------------------------------ thinning


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """The two sub-iteration lookup tables of Lam, Lee and Suen's thinning (MATLAB's
    ``bwmorph thin``), indexed by the 8-neighbourhood code (bit i = neighbour x_{i+1},
    x1 east then counter-clockwise: E, NE, N, NW, W, SW, S, SE)."""
    lut1 = np.zeros(256, bool)
    lut2 = np.zeros(256, bool)
    for code in range(256):
        x = [(code >> i) & 1 for i in range(8)] + [code & 1]  # x[8] = x1 again
        xh = sum(1 for i in range(4) if not x[2 * i] and (x[2 * i + 1] or x[2 * i + 2]))
        n1 = sum(1 for k in range(4) if x[2 * k] or x[2 * k + 1])
        n2 = sum(1 for k in range(4) if x[2 * k + 1] or x[(2 * k + 2) % 8])
        g12 = xh == 1 and 2 <= min(n1, n2) <= 3
        x1, x2, x3, x4, x5, x6, x7, x8 = x[:8]
        lut1[code] = g12 and not ((x2 or x3 or not x8) and x1)
        lut2[code] = g12 and not ((x6 or x7 or not x4) and x5)
    return lut1, lut2


_LUTS = _thin_luts()
# weights of the 8 neighbours: rows are y (north = row - 1); bit order E, NE, N, NW, W, SW, S, SE
_CODE_KERNEL = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], np.int32)


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a ``(H, W)`` bool map to one-pixel-wide curves (repeated until nothing changes),
    the algorithm of MATLAB's ``bwmorph(mask, 'thin', Inf)``."""
    m = np.asarray(mask, bool).copy()
    while True:
        changed = False
        for lut in _LUTS:
            code = ndimage.correlate(m.astype(np.int32), _CODE_KERNEL, mode="constant")
            delete = m & lut[code]
            if delete.any():
                m &= ~delete
                changed = True
        if not changed:
            return m


# ------------------------------------------------------------------------------------ matching


def correspond_pixels(
    pred: np.ndarray, gt: np.ndarray, max_dist: float = 0.0075
) -> tuple[np.ndarray, np.ndarray, float]:
    """One-to-one correspondence of the boundary pixels of two ``(H, W)`` bool maps.

    Pixels ``p`` (of ``pred``) and ``g`` (of ``gt``) may be paired when their Euclidean distance
    is at most ``max_dist * sqrt(H^2 + W^2)``. The pairing is a minimum-cost perfect matching
    in which every pixel may instead go to an outlier at cost ``100 * max_dist`` (in pixels),
    as the benchmark's ``correspondPixels`` sets it: so the most pairs are made, and among
    those the least total distance. Solved exactly: pixels linked by no chain of candidate pairs
    never interact, so each connected component of the candidate graph is solved on its own,
    as a dense assignment (SciPy's ``linear_sum_assignment``), or on the benchmark's sparse
    outlier graph (LAPJVsp) when it is very large (:data:`DENSE_LIMIT`).

    Returns ``match1 (H, W)`` bool (the predicted pixels that are paired), ``match2 (H, W)``
    bool (the ground-truth pixels that are paired) and the matching's total cost in pixels.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(
            f"pred and gt must be (H, W) maps of one size; got {pred.shape}, {gt.shape}"
        )
    h, w = pred.shape
    radius = max_dist * float(np.hypot(h, w))
    outlier = OUTLIER_FACTOR * radius
    m1 = np.zeros((h, w), bool)
    m2 = np.zeros((h, w), bool)
    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    n1, n2 = len(py), len(gy)
    if n1 == 0 or n2 == 0:
        return m1, m2, outlier * (n1 + n2)
    # candidate pairs within the radius: look up ground-truth pixels in a window around each
    r = int(np.floor(radius))
    gindex = -np.ones((h, w), np.int64)
    gindex[gy, gx] = np.arange(n2)
    rows, cols, dists = [], [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            d = float(np.hypot(dy, dx))
            if d > radius:
                continue
            yy, xx = py + dy, px + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            j = np.full(n1, -1, np.int64)
            j[ok] = gindex[yy[ok], xx[ok]]
            hit = j >= 0
            rows.append(np.nonzero(hit)[0])
            cols.append(j[hit])
            dists.append(np.full(int(hit.sum()), d))
    ri = np.concatenate(rows)
    ci = np.concatenate(cols)
    di = np.concatenate(dists)
    if len(ri) == 0:
        return m1, m2, outlier * (n1 + n2)
    # Pixels that share no candidate pair never interact: the matching splits exactly into
    # the connected components of the candidate graph, each solved on its own (far faster
    # than one large assignment). A pixel with no candidate goes to its outlier.
    link = coo_matrix((np.ones(len(ri)), (ri, n1 + ci)), shape=(n1 + n2, n1 + n2))
    _, comp = connected_components(link, directed=False)
    pair_comp = comp[ri]
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    node_order = np.argsort(comp, kind="stable")
    sorted_comp = comp[node_order]
    with_pairs = np.unique(pair_comp)
    starts = np.searchsorted(sorted_comp, with_pairs, side="left")
    stops = np.searchsorted(sorted_comp, with_pairs, side="right")
    paired_p: list[np.ndarray] = []
    paired_g: list[np.ndarray] = []
    cost = outlier * (n1 + n2)
    for group, start, stop in zip(np.split(order, bounds), starts, stops, strict=True):
        nodes = node_order[start:stop]
        ps, gs = nodes[nodes < n1], nodes[nodes >= n1] - n1
        m_p, m_g, sub_cost = _match_component(ps, gs, ri[group], ci[group], di[group], outlier)
        paired_p.append(m_p)
        paired_g.append(m_g)
        cost += sub_cost - outlier * (len(ps) + len(gs))
    pp = np.concatenate(paired_p)
    pg = np.concatenate(paired_g)
    m1[py[pp], px[pp]] = True
    m2[gy[pg], gx[pg]] = True
    return m1, m2, cost


def _match_component(
    ps: np.ndarray, gs: np.ndarray, ri: np.ndarray, ci: np.ndarray, di: np.ndarray, outlier: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """The minimum-cost matching of one component: pred pixels ``ps`` and gt pixels ``gs``
    (sorted global indices), candidate pairs ``(ri, ci)`` at distances ``di``. Returns the
    paired pred and gt indices (global) and the cost in pixels.

    Pairing ``i`` with ``j`` instead of sending both to their outliers changes the cost by
    ``d - 2C``. So the matching is the assignment of the ``(n1, n2)`` matrix that holds
    ``d - 2C`` at the candidate pairs and 0 elsewhere (an assigned 0 is no pair), solved
    exactly by SciPy's dense ``linear_sum_assignment`` (shortest augmenting paths). This gives
    the same optimum as the benchmark's sparse outlier graph (:func:`correspond_pixels`)."""
    n1, n2 = len(ps), len(gs)
    li = np.searchsorted(ps, ri)
    lj = np.searchsorted(gs, ci)
    if n1 * n2 > DENSE_LIMIT:
        return _match_sparse(ps, gs, li, lj, di, outlier)
    gain = np.zeros((n1, n2))
    gain[li, lj] = di - 2.0 * outlier
    rows, cols = linear_sum_assignment(gain)
    real = gain[rows, cols] < 0
    rows, cols = rows[real], cols[real]
    cost = outlier * (n1 + n2) + float(gain[rows, cols].sum())
    return ps[rows], gs[cols], cost


def _match_sparse(
    ps: np.ndarray, gs: np.ndarray, li: np.ndarray, lj: np.ndarray, di: np.ndarray, outlier: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`_match_component` on the benchmark's sparse outlier graph (``li``, ``lj``: local
    indices): bounded memory, but SciPy's LAPJVsp can take minutes on large dense components.

    Left nodes: pred pixels (n1) then gt outliers (n2); right: gt pixels (n2) then pred
    outliers (n1). A pred pixel i pairs with gt pixel j (cost d) or its outlier (cost C); gt
    pixel j with its outlier (cost C); the outliers of a candidate pair (i, j) pair with each
    other (cost 0) so that pairing i with j leaves no outlier stranded. Every weight gets +1
    (a constant over perfect matchings: SciPy treats absent entries, not zeros, as missing)."""
    n1, n2 = len(ps), len(gs)
    ar1, ar2 = np.arange(n1), np.arange(n2)
    left = np.concatenate([li, ar1, n1 + ar2, n1 + lj])
    right = np.concatenate([lj, n2 + ar1, ar2, n2 + li])
    weight = np.concatenate([di, np.full(n1, outlier), np.full(n2, outlier), np.zeros(len(li))])
    graph = coo_matrix((weight + 1.0, (left, right)), shape=(n1 + n2, n1 + n2)).tocsr()
    match = min_weight_full_bipartite_matching(graph)[1]  # left node -> right node
    paired = match[:n1] < n2
    cost = float(np.asarray(graph[np.arange(n1 + n2), match]).sum()) - (n1 + n2)
    return ps[paired], gs[match[:n1][paired]], cost


# ------------------------------------------------------------------------------------ counts


@dataclass
class ImageCounts:
    """One image's counts per threshold (each ``(K,)`` int64), as ``evaluation_bdry_image``."""

    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray


def _thresholds(thresholds: int | Sequence[float]) -> np.ndarray:
    if isinstance(thresholds, (int, np.integer)):
        k = int(thresholds)
        if k < 1:
            raise ValueError(f"thresholds must be a positive count or a list; got {k}")
        return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)
    t = np.asarray(thresholds, np.float64).ravel()
    if t.size == 0:
        raise ValueError("thresholds must not be empty")
    return t


def edge_counts(
    pred: np.ndarray,
    gts: Sequence[np.ndarray],
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin_pred: bool = True,
) -> ImageCounts:
    """The counts of one image: ``pred (H, W)`` float in [0, 1] against the annotators'
    boundary maps ``gts`` (each ``(H, W)``, non-zero = boundary)."""
    pred = np.asarray(pred, np.float64)
    if pred.ndim != 2:
        raise ValueError(f"an edge map must be (H, W); got shape {pred.shape}")
    gts = [np.asarray(g) != 0 for g in gts]
    if not gts:
        raise ValueError("each image needs at least one ground-truth boundary map")
    for g in gts:
        if g.shape != pred.shape:
            raise ValueError(f"ground truth of size {g.shape} for an edge map of size {pred.shape}")
    ts = _thresholds(thresholds)
    k = len(ts)
    out = ImageCounts(*(np.zeros(k, np.int64) for _ in range(4)))
    total_gt = sum(int(g.sum()) for g in gts)
    for i, t in enumerate(ts):
        bmap = pred >= max(t, np.finfo(np.float64).eps)
        if thin_pred:
            bmap = thin(bmap)
        acc = np.zeros_like(bmap)
        cnt_r = 0
        for g in gts:
            m1, m2, _ = correspond_pixels(bmap, g, max_dist)
            acc |= m1
            cnt_r += int(m2.sum())
        out.cnt_r[i], out.sum_r[i] = cnt_r, total_gt
        out.cnt_p[i], out.sum_p[i] = int(acc.sum()), int(bmap.sum())
    return out


# ------------------------------------------------------------------------------------ summary


@dataclass
class EdgeEvalResult:
    """The benchmark's numbers and curve. ``thresholds``, ``recall``, ``precision``, ``f``:
    ``(K,)`` over the dataset; ``ods_threshold``; ``per_image``: ``(N, 4)`` best threshold,
    recall, precision, F of each image (interpolated as the benchmark does)."""

    ods: float
    ois: float
    ap: float
    r50: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    per_image: np.ndarray

    def metrics(self) -> dict[str, float]:
        """``{"ODS", "OIS", "AP", "R50"}`` as floats."""
        return {"ODS": self.ods, "OIS": self.ois, "AP": self.ap, "R50": self.r50}


def _rp(cnt_r, sum_r, cnt_p, sum_p) -> tuple[np.ndarray, np.ndarray]:
    cnt_r, sum_r, cnt_p, sum_p = (np.asarray(a, np.float64) for a in (cnt_r, sum_r, cnt_p, sum_p))
    return cnt_r / (sum_r + (sum_r == 0)), cnt_p / (sum_p + (sum_p == 0))


def _fmeasure(r, p):
    r, p = np.asarray(r, np.float64), np.asarray(p, np.float64)
    s = p + r
    return 2 * p * r / (s + (s == 0))


def _best_f(t: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """The benchmark's ``maxF``: the best F on the curve, linear between neighbouring
    thresholds (100 steps each). Returns (threshold, recall, precision, F)."""
    best = (float(t[0]), float(r[0]), float(p[0]), float(_fmeasure(r[0], p[0])))
    d = np.linspace(0, 1, 100)
    for i in range(1, len(t)):
        tt = t[i] * d + t[i - 1] * (1 - d)
        rr = r[i] * d + r[i - 1] * (1 - d)
        pp = p[i] * d + p[i - 1] * (1 - d)
        ff = _fmeasure(rr, pp)
        j = int(np.argmax(ff))
        if ff[j] > best[3]:
            best = (float(tt[j]), float(rr[j]), float(pp[j]), float(ff[j]))
    return best


def summarize_counts(
    counts: Sequence[ImageCounts], thresholds: int | Sequence[float] = 99
) -> EdgeEvalResult:
    """ODS, OIS, AP and R50 from the per-image counts (see the module docstring)."""
    if not counts:
        raise ValueError("no images to summarise")
    ts = _thresholds(thresholds)
    per_image = []
    ois = np.zeros(4)
    tot = np.zeros((4, len(ts)))
    for c in counts:
        arr = np.stack([c.cnt_r, c.sum_r, c.cnt_p, c.sum_p]).astype(np.float64)
        r, p = _rp(*arr)
        per_image.append(_best_f(ts, r, p))
        f = _fmeasure(r, p)
        k = int(np.nonzero(f == f.max())[0][-1])  # the benchmark takes the last maximum
        ois += arr[:, k]
        tot += arr
    r, p = _rp(*tot)
    f = _fmeasure(r, p)
    bt, br, bp, bf = _best_f(ts, r, p)
    oir, oip = _rp(*ois)
    ois_f = float(_fmeasure(oir, oip))
    # AP: precision interpolated at recall 0:0.01:1 over the curve's distinct recalls (> 0)
    ru, first = np.unique(r, return_index=True)
    keep = ru > 0
    ru, pu = ru[keep], p[first][keep]
    ap = 0.0
    if len(ru) > 1:
        grid = np.linspace(0, 1, 101)
        inside = (grid >= ru[0]) & (grid <= ru[-1])
        ap = float(np.interp(grid[inside], ru, pu).sum() / 100)
    # R50: recall interpolated at precision 0.5 (or at the curve's highest precision)
    pu2, first2 = np.unique(p, return_index=True)
    ru2 = r[first2]
    q = max(float(pu2[-1]), 0.5)
    r50 = float(np.interp(q, pu2, ru2)) if pu2[0] <= q else float("nan")
    return EdgeEvalResult(
        ods=bf,
        ois=ois_f,
        ap=ap,
        r50=r50,
        ods_threshold=bt,
        ods_recall=br,
        ods_precision=bp,
        thresholds=ts,
        recall=r,
        precision=p,
        f=f,
        per_image=np.asarray(per_image, np.float64),
    )


def evaluate_edges(
    pred_maps: Sequence[np.ndarray],
    gt_boundary_sets: Sequence[Sequence[np.ndarray]],
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin_pred: bool = True,
) -> EdgeEvalResult:
    """Score edge maps as the BSDS500 benchmark does.

    Args:
        pred_maps: N edge maps, each ``(H, W)`` float in [0, 1] (uint8 maps are divided by 255).
        gt_boundary_sets: for each image, the annotators' ``(H, W)`` boundary maps (non-zero =
            boundary), of the image's size.
        thresholds: a count K (``linspace(1/(K+1), 1-1/(K+1), K)``, the benchmark's 99) or the
            levels themselves.
        max_dist: the matching tolerance as a fraction of the image diagonal.
        thin_pred: thin each thresholded map first (the benchmark's default).
    """
    if len(pred_maps) != len(gt_boundary_sets):
        raise ValueError(
            f"{len(pred_maps)} edge maps but {len(gt_boundary_sets)} ground-truth sets"
        )
    if not 0 < max_dist < 1:
        raise ValueError(f"max_dist is a fraction of the diagonal in (0, 1); got {max_dist}")
    counts = []
    for pred, gts in zip(pred_maps, gt_boundary_sets, strict=True):
        pred = np.asarray(pred)
        if pred.dtype == np.uint8:
            pred = pred / 255.0
        counts.append(edge_counts(pred, gts, thresholds, max_dist, thin_pred))
    return summarize_counts(counts, thresholds)
