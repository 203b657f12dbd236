"""Interactive point evaluation: the click protocol of the SAM paper (after RITM).

For each ground-truth mask a simulated user clicks repeatedly and the model refines its mask:

* **click 1** is a foreground click at the pixel farthest from the mask boundary (maximum of
  the Euclidean distance transform of the mask padded by one pixel of background, so the
  image border counts as boundary);
* **click k+1** comes from the error of the current prediction: of the false-negative region
  (``gt & ~pred``) and the false-positive region (``pred & ~gt``), the one whose interior
  point lies farther from its boundary (distance transforms as above) gets a click at that
  point: foreground (label 1) in the false negatives, background (label 0) in the false
  positives (a tie goes to the background click, as in RITM). When the prediction equals the
  ground truth no click is added and the IoU stays as it is for the remaining clicks.

Two tracks are run independently, each with its own clicks:

* ``top``: click 1 with ``multimask_output=True`` keeping the mask of highest *predicted*
  IoU; clicks 2.. with ``multimask_output=False``, all clicks so far, and ``mask_input`` =
  the low-res logits chosen at the previous click;
* ``oracle``: ``multimask_output=True`` at every click, keeping the mask with the best IoU
  against the ground truth (``mask_input`` = the previous chosen logits from click 2 on).

IoU is computed between original-resolution binary masks. Click coordinates are ``(x, y)``
integer pixel indices in the original image (x along the width, origin at the top-left pixel),
exactly what :meth:`segany.SamPredictor.predict` takes (the prompt encoder itself adds the
half-pixel shift to the pixel centre).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..io.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..masks import mask_iou as _bool_mask_iou

__all__ = [
    "DEFAULT_CLICKS",
    "NOC_MAX_CLICKS",
    "NOC_TARGETS",
    "InteractiveResult",
    "average_results",
    "datasets_table",
    "plot_datasets",
    "evaluate_interactive",
    "farthest_point",
    "first_click",
    "mask_iou",
    "next_click",
    "number_of_clicks",
]

#: Click counts reported by default (the SAM paper's 1, 2, 3, 5 and 9 points).
DEFAULT_CLICKS: tuple[int, ...] = (1, 2, 3, 5, 9)

#: NoC (number of clicks to reach an IoU) as interactive segmentation papers report it: the
#: IoU targets 0.85 and 0.90, and the cap of 20 clicks (a mask that never reaches the target
#: counts 20).
NOC_TARGETS: tuple[float, ...] = (0.85, 0.90)
NOC_MAX_CLICKS = 20


# --------------------------------------------------------------------------- clicks


def farthest_point(region: np.ndarray) -> tuple[int, int, float]:
    """The pixel of ``region`` farthest from its boundary.

    Args:
        region: ``(H, W)`` bool (or 0/1) mask.

    Returns:
        ``(x, y, distance)``: integer pixel indices (x along the width) of the maximum of the
        L2 distance transform of ``region`` padded by one pixel of zeros (so the image border
        is boundary), and that distance in pixels (a lone pixel has distance 1). When several
        pixels reach the maximum (a ridge, as along an elongated rectangle), the one nearest
        their mean is taken (first in row-major order on a further tie), so a rectangle is
        clicked in its centre. ``distance`` is 0 (and ``x = y = 0``) for an empty region.
    """
    r = np.asarray(region)
    if r.ndim != 2:
        raise ValueError(f"region must be a (H, W) mask; got shape {r.shape}")
    padded = np.pad(r.astype(np.uint8, copy=False) != 0, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    best = float(dist.max())
    if best <= 0:
        return 0, 0, 0.0
    ys, xs = np.nonzero(dist >= best - 1e-4)
    # several maxima (a ridge, e.g. along an elongated rectangle): the one nearest their mean
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[k]), int(ys[k]), best


def first_click(gt: np.ndarray) -> tuple[int, int]:
    """Click 1 on a ground-truth ``(H, W)`` bool mask: ``(x, y)`` pixel farthest from its
    boundary (label 1). Raises ValueError for an empty mask."""
    x, y, d = farthest_point(gt)
    if d <= 0:
        raise ValueError("cannot click on an empty mask")
    return x, y


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int] | None:
    """The follow-up click given the ground truth and the current prediction.

    Args:
        gt, pred: ``(H, W)`` bool masks at the original image resolution.

    Returns:
        ``(x, y, label)`` with ``(x, y)`` integer pixel indices: the point farthest from the
        boundary of the false-negative region (label 1) or of the false-positive region
        (label 0), whichever is farther from its boundary (a tie gives label 0); ``None`` when
        ``pred`` equals ``gt``.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(
            f"gt and pred must be (H, W) masks of one shape; got {gt.shape}, {pred.shape}"
        )
    fn = gt & ~pred
    fp = pred & ~gt
    x_fn, y_fn, d_fn = farthest_point(fn)
    x_fp, y_fp, d_fp = farthest_point(fp)
    if d_fn <= 0 and d_fp <= 0:
        return None
    if d_fn > d_fp:
        return x_fn, y_fn, 1
    return x_fp, y_fp, 0


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of masks ``pred (..., H, W)`` against ``gt`` (broadcast, e.g. ``(B, C, H, W)`` against
    ``(B, 1, H, W)``), taken as bool; float64 of the broadcast leading shape. Two empty masks
    have IoU 1 (:func:`segany.masks.mask_iou` on numpy bool arrays)."""
    return _bool_mask_iou(np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool))


def number_of_clicks(
    iou: np.ndarray, target: float, max_clicks: int = NOC_MAX_CLICKS
) -> np.ndarray:
    """Clicks each mask needs to reach ``IoU >= target``: ``iou`` is ``(num_masks, K)`` with
    the IoU after click 1..K (K >= ``max_clicks``); the result is ``(num_masks,)`` int64, the
    first click k (1-based) whose IoU reaches the target, or ``max_clicks`` when none of the
    first ``max_clicks`` does."""
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2 or iou.shape[1] < max_clicks:
        raise ValueError(
            f"NoC with a cap of {max_clicks} clicks needs IoU after {max_clicks} clicks; "
            f"got shape {iou.shape}"
        )
    reached = iou[:, :max_clicks] >= target
    first = reached.argmax(axis=1) + 1
    return np.where(reached.any(axis=1), first, max_clicks).astype(np.int64)


def _noc_name(target: float) -> str:
    return f"NoC@{round(target * 100)}"


# --------------------------------------------------------------------------- result


@dataclass
class InteractiveResult:
    """Outcome of :func:`evaluate_interactive`.

    Attributes:
        clicks: the reported click counts, increasing (e.g. ``(1, 2, 3, 5, 9)``).
        miou_top, miou_oracle: mIoU (mean over all masks) after each of ``clicks``, per track.
        num_masks: masks evaluated (non-empty ground-truth masks, after subsampling).
        num_images: images with at least one evaluated mask.
        iou_top, iou_oracle: ``(num_masks, K)`` float64 per-mask IoU after click 1, 2, ..., K
            (column ``k - 1`` is after click ``k``); K is ``max(clicks)``, or
            :data:`NOC_MAX_CLICKS` if larger when NoC was asked for.
        image_names: names of the evaluated images.
        mask_image: ``(num_masks,)`` int64 index into ``image_names`` of each mask's image.
        mask_index: ``(num_masks,)`` int64 index of each mask in its sample's ``masks``.
        seconds: wall time of the evaluation.
    """

    clicks: tuple[int, ...]
    miou_top: list[float]
    miou_oracle: list[float]
    num_masks: int
    num_images: int
    iou_top: np.ndarray
    iou_oracle: np.ndarray
    image_names: list[str] = field(default_factory=list)
    mask_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mask_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seconds: float = 0.0

    def noc(self) -> dict[str, dict[str, float]] | None:
        """Mean NoC per track, ``{"top": {"NoC@85": ..., "NoC@90": ...}, "oracle": {...}}``
        (:func:`number_of_clicks`, cap :data:`NOC_MAX_CLICKS`), or None when fewer clicks
        than the cap were run."""
        if self.iou_top.ndim != 2 or self.iou_top.shape[1] < NOC_MAX_CLICKS:
            return None
        return {
            track: {_noc_name(t): float(number_of_clicks(iou, t).mean()) for t in NOC_TARGETS}
            for track, iou in (("top", self.iou_top), ("oracle", self.iou_oracle))
        }

    def table(self) -> str:
        """A Markdown table: rows ``top`` and ``oracle``, columns ``1 pt``, ``2 pt``, ...,
        values mIoU with 3 decimals; then ``NoC@85`` and ``NoC@90`` when :meth:`noc` has
        them (2 decimals)."""
        noc = self.noc()
        names = [_noc_name(t) for t in NOC_TARGETS] if noc else []
        head = "| track | " + " | ".join([*(f"{k} pt" for k in self.clicks), *names]) + " |"
        rule = "|---|" + "---:|" * (len(self.clicks) + len(names))
        rows = []
        for name, values in (("top", self.miou_top), ("oracle", self.miou_oracle)):
            cells = [f"{v:.3f}" for v in values]
            cells += [f"{noc[name][n]:.2f}" for n in names] if noc else []
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join([head, rule, *rows])

    def summary(self) -> str:
        """One line: how many masks and images, and the time taken."""
        return (
            f"interactive mIoU over {self.num_masks} masks in {self.num_images} images "
            f"({self.seconds:.1f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict: ``clicks``, ``miou_top``, ``miou_oracle``, counts, ``seconds``,
        ``noc`` (:meth:`noc`, null without enough clicks) and ``per_mask`` (a list of ``{"image", "mask", "iou_top", "iou_oracle"}`` with the IoU
        after click 1..max(clicks))."""
        return {
            "protocol": "sam-interactive-points",
            "clicks": list(self.clicks),
            "miou_top": [float(v) for v in self.miou_top],
            "miou_oracle": [float(v) for v in self.miou_oracle],
            "num_masks": int(self.num_masks),
            "num_images": int(self.num_images),
            "seconds": float(self.seconds),
            "noc": self.noc(),
            "noc_max_clicks": NOC_MAX_CLICKS,
            "per_mask": [
                {
                    "image": self.image_names[int(img)],
                    "mask": int(k),
                    "iou_top": [float(v) for v in top],
                    "iou_oracle": [float(v) for v in oracle],
                }
                for img, k, top, oracle in zip(
                    self.mask_image, self.mask_index, self.iou_top, self.iou_oracle, strict=True
                )
            ],
        }

    def write_json(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` (plus ``extra`` keys, e.g. the model and data) as JSON,
        atomically. The folder must exist."""
        write_json_atomic(path, {**self.to_dict(), **(dict(extra) if extra else {})})

    def write_markdown(self, path: str | os.PathLike) -> None:
        """Write :meth:`summary` and :meth:`table` as a Markdown file, atomically."""
        write_text_atomic(path, f"{self.summary()}\n\n{self.table()}\n")

    def plot(self, path: str | os.PathLike) -> None:
        """Save a PNG line plot of mIoU against the number of clicks for both tracks
        (matplotlib, Agg canvas; no global backend change), atomically."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 3.6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(self.clicks, self.miou_top, marker="o", label="top (predicted IoU)")
        ax.plot(self.clicks, self.miou_oracle, marker="s", label="oracle (best of 3)")
        ax.set_xlabel("clicks")
        ax.set_ylabel("mIoU")
        ax.set_xticks(list(self.clicks))
        ax.set_ylim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(f"interactive points: {self.num_masks} masks, {self.num_images} images")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- evaluation


def _check_clicks(clicks: Sequence[int]) -> tuple[int, ...]:
    try:
        values = sorted({int(k) for k in clicks})
    except (TypeError, ValueError):
        raise ValueError(f"clicks must be positive integers; got {clicks!r}") from None
    if not values or values[0] < 1 or any(int(k) != k for k in clicks):
        raise ValueError(f"clicks must be a non-empty list of positive integers; got {clicks!r}")
    return tuple(values)


def _optional_positive(value: int | None, name: str) -> int | None:
    if value is not None and (int(value) != value or value < 1):
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
    return None if value is None else int(value)


def _select_masks(masks: np.ndarray, limit: int | None, seed: int, image_index: int) -> np.ndarray:
    """Indices of the non-empty masks to evaluate: all of them, or ``limit`` of them drawn
    without replacement by a generator seeded with ``(seed, image_index)``, in index order."""
    nonempty = np.flatnonzero(masks.any(axis=(1, 2)))
    if limit is not None and len(nonempty) > limit:
        rng = np.random.default_rng([seed, image_index])
        nonempty = np.sort(rng.choice(nonempty, size=limit, replace=False))
    return nonempty


class _Track:
    """Clicks, chosen masks and logits of one track for the masks of one image."""

    def __init__(self, oracle: bool, m: int, n_clicks: int, h: int, w: int) -> None:
        self.oracle = oracle
        self.coords = np.zeros((m, n_clicks, 2), np.float64)
        self.labels = np.zeros((m, n_clicks), np.int64)
        self.pred = np.zeros((m, h, w), bool)
        self.logits: np.ndarray | None = None  # (M, 1, L, L) float32
        self.done = np.zeros(m, bool)
        self.ious = np.zeros((m, n_clicks), np.float64)

    def choose(
        self,
        rows: np.ndarray,
        masks: np.ndarray,
        scores: np.ndarray,
        low: np.ndarray,
        gts: np.ndarray,
    ) -> None:
        """Store the chosen mask of each prompt set ``rows`` from ``masks (B, C, H, W)``,
        ``scores (B, C)`` and ``low (B, C, L, L)``."""
        masks = masks.astype(bool, copy=False)
        ious = mask_iou(masks, gts[:, None])  # (B, C)
        pick = ious.argmax(axis=1) if self.oracle else scores.argmax(axis=1)
        b = np.arange(len(rows))
        if self.logits is None:
            self.logits = np.zeros((len(self.pred), 1, *low.shape[-2:]), np.float32)
        self.pred[rows] = masks[b, pick]
        self.logits[rows, 0] = low[b, pick]


def _predict_chunks(
    predictor: Any,
    coords: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray | None,
    multimask: bool,
    batch_size: int,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """``predictor.predict`` on prompt sets ``coords (B, N, 2)``, ``labels (B, N)``,
    ``mask_input (B, 1, L, L)`` in chunks of ``batch_size`` sets, yielded one at a time (so
    at most one chunk of full-resolution masks is held)."""
    for start in range(0, len(coords), batch_size):
        sl = slice(start, start + batch_size)
        masks, scores, low = predictor.predict(
            point_coords=coords[sl],
            point_labels=labels[sl],
            mask_input=None if mask_input is None else mask_input[sl],
            multimask_output=multimask,
        )
        yield sl, np.asarray(masks), np.asarray(scores), np.asarray(low)


def _evaluate_image(
    predictor: Any, gts: np.ndarray, n_clicks: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-mask IoUs ``(M, n_clicks)`` of the top and oracle tracks for ``gts (M, H, W)``
    (the predictor's image already set)."""
    m, h, w = gts.shape
    tracks = [_Track(oracle, m, n_clicks, h, w) for oracle in (False, True)]
    first = np.array([first_click(g) for g in gts], np.float64)  # (M, 2) xy
    for t in tracks:
        t.coords[:, 0] = first
        t.labels[:, 0] = 1
    # click 1 is the same prompt for both tracks: predict once, choose per track
    for sl, masks, scores, low in _predict_chunks(
        predictor, first[:, None], np.ones((m, 1), np.int64), None, True, batch_size
    ):
        rows = np.arange(m)[sl]
        for t in tracks:
            t.choose(rows, masks, scores, low, gts[sl])
    for t in tracks:
        t.ious[:, 0] = mask_iou(t.pred, gts)
    for k in range(1, n_clicks):  # k clicks so far; add click k + 1
        for t in tracks:
            active = []
            for j in np.flatnonzero(~t.done):
                click = next_click(gts[j], t.pred[j])
                if click is None:
                    t.done[j] = True
                    continue
                t.coords[j, k] = click[:2]
                t.labels[j, k] = click[2]
                active.append(j)
            rows_all = np.asarray(active, np.int64)
            if len(rows_all):
                assert t.logits is not None
                for sl, masks, scores, low in _predict_chunks(
                    predictor,
                    t.coords[rows_all, : k + 1],
                    t.labels[rows_all, : k + 1],
                    t.logits[rows_all],
                    t.oracle,
                    batch_size,
                ):
                    rows = rows_all[sl]
                    t.choose(rows, masks, scores, low, gts[rows])
            t.ious[:, k] = mask_iou(t.pred, gts)
    return tracks[0].ious, tracks[1].ious


def evaluate_interactive(
    predictor: Any,
    dataset: Any,
    *,
    clicks: Sequence[int] = DEFAULT_CLICKS,
    max_masks_per_image: int | None = None,
    max_images: int | None = None,
    image_indices: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    noc: bool = False,
) -> InteractiveResult:
    """Run the interactive point protocol (module docstring) on a dataset.

    Args:
        predictor: a :class:`segany.SamPredictor` (or anything with its ``set_image(image)``
            and batched ``predict(point_coords (B, N, 2), point_labels (B, N), mask_input
            (B, 1, L, L), multimask_output)`` returning ``masks (B, C, H, W)`` bool,
            ``scores (B, C)`` and ``low_res_logits (B, C, L, L)``).
        dataset: ``len(dataset)`` and ``dataset[i]`` with ``.image`` ``(H, W, 3)`` uint8 RGB
            and ``.masks`` ``(K, H, W)`` bool (a :class:`segany.data.datasets.Sample`; a
            :class:`segany.data.scenes.Scene` works too), optionally ``.name``.
        clicks: click counts to report (positive; clicks run up to ``max(clicks)``).
        max_masks_per_image: evaluate at most this many non-empty masks per image, drawn
            deterministically from ``(seed, image index)``; None = all.
        max_images: evaluate only the first this many images; None = all.
        image_indices: evaluate only these dataset indices (of the first ``max_images``), e.g.
            one process's share of a distributed evaluation; the masks drawn for an image
            depend on its dataset index, so shards add up to the whole evaluation.
        seed: seed of the mask subsampling.
        batch_size: prompt sets (masks) decoded per ``predict`` call; results do not depend
            on it (the predictor decodes each set exactly as alone).
        progress: show a tqdm bar on stderr.
        noc: run at least :data:`NOC_MAX_CLICKS` clicks so that the result has NoC@85 and
            NoC@90 (:meth:`InteractiveResult.noc`); the reported mIoU do not change.

    Returns:
        An :class:`InteractiveResult`. Empty ground-truth masks are skipped; images left
        without masks are not encoded.

    Raises:
        ValueError: bad arguments, or no non-empty mask in the evaluated images.
    """
    report = _check_clicks(clicks)
    n_clicks = max(report[-1], NOC_MAX_CLICKS) if noc else report[-1]
    max_masks_per_image = _optional_positive(max_masks_per_image, "max_masks_per_image")
    max_images = _optional_positive(max_images, "max_images")
    batch_size = _optional_positive(batch_size, "batch_size") or 16
    n_images = len(dataset) if max_images is None else min(len(dataset), max_images)
    start = time.perf_counter()
    indices: Any = range(n_images)
    if image_indices is not None:
        indices = [int(i) for i in image_indices]
        bad = [i for i in indices if not 0 <= i < n_images]
        if bad:
            raise ValueError(
                f"image_indices {bad[:5]} outside the evaluated images [0, {n_images})"
            )
    bar = None
    if progress:
        from tqdm import tqdm

        indices = bar = tqdm(indices, desc="eval", unit="image")
    top: list[np.ndarray] = []
    oracle: list[np.ndarray] = []
    names: list[str] = []
    mask_image: list[np.ndarray] = []
    mask_index: list[np.ndarray] = []
    for i in indices:
        sample = dataset[i]
        masks = np.asarray(sample.masks, dtype=bool)
        image = np.asarray(sample.image)
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"sample {i}: masks must be (K, H, W) matching the image {image.shape[:2]}; "
                f"got {masks.shape}"
            )
        chosen = _select_masks(masks, max_masks_per_image, seed, i)
        if len(chosen) == 0:
            continue
        predictor.set_image(image)
        it, io_ = _evaluate_image(predictor, masks[chosen], n_clicks, batch_size)
        top.append(it)
        oracle.append(io_)
        mask_image.append(np.full(len(chosen), len(names), np.int64))
        mask_index.append(chosen.astype(np.int64))
        names.append(str(getattr(sample, "name", f"image_{i:06d}")))
        if bar is not None:
            bar.set_postfix(masks=sum(len(t) for t in top))
    if bar is not None:
        bar.close()
    if not top:
        raise ValueError(
            f"no non-empty ground-truth masks in the {n_images} evaluated image(s); nothing to "
            f"evaluate"
        )
    iou_top = np.concatenate(top)
    iou_oracle = np.concatenate(oracle)
    cols = [k - 1 for k in report]
    return InteractiveResult(
        clicks=report,
        miou_top=[float(v) for v in iou_top[:, cols].mean(axis=0)],
        miou_oracle=[float(v) for v in iou_oracle[:, cols].mean(axis=0)],
        num_masks=len(iou_top),
        num_images=len(names),
        iou_top=iou_top,
        iou_oracle=iou_oracle,
        image_names=names,
        mask_image=np.concatenate(mask_image),
        mask_index=np.concatenate(mask_index),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- several datasets


def average_results(results: Sequence[InteractiveResult]) -> dict[str, Any]:
    """The mean over datasets (each dataset weighs the same, as the SAM paper's 23-dataset
    average): ``{"datasets", "clicks", "miou_top", "miou_oracle", "noc"}`` (``noc`` null unless
    every result has it). All results must report the same click counts."""
    if not results:
        raise ValueError("no results to average")
    clicks = results[0].clicks
    if any(r.clicks != clicks for r in results):
        raise ValueError("results to average must report the same click counts")
    nocs = [r.noc() for r in results]
    noc = None
    if all(n is not None for n in nocs):
        noc = {
            track: {name: float(np.mean([n[track][name] for n in nocs])) for name in nocs[0][track]}
            for track in nocs[0]
        }
    return {
        "datasets": len(results),
        "clicks": list(clicks),
        "miou_top": [float(v) for v in np.mean([r.miou_top for r in results], axis=0)],
        "miou_oracle": [float(v) for v in np.mean([r.miou_oracle for r in results], axis=0)],
        "noc": noc,
    }


def datasets_table(names: Sequence[str], results: Sequence[InteractiveResult]) -> str:
    """A Markdown table of the ``top`` track: one row per dataset (mIoU after each click
    count, NoC@85 and NoC@90 when run, masks) and their average (:func:`average_results`)."""
    avg = average_results(results)
    noc_names = [_noc_name(t) for t in NOC_TARGETS] if avg["noc"] else []
    cols = [*(f"{k} pt" for k in avg["clicks"]), *noc_names, "masks"]
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in zip(names, results, strict=True):
        noc = r.noc()
        cells = [f"{v:.3f}" for v in r.miou_top]
        cells += [f"{noc['top'][n]:.2f}" for n in noc_names] if noc_names else []
        lines.append(f"| {name} | " + " | ".join([*cells, str(r.num_masks)]) + " |")
    cells = [f"{v:.3f}" for v in avg["miou_top"]]
    cells += [f"{avg['noc']['top'][n]:.2f}" for n in noc_names] if noc_names else []
    total = sum(r.num_masks for r in results)
    lines.append(f"| **average of {len(results)}** | " + " | ".join([*cells, str(total)]) + " |")
    return "\n".join(lines)


def plot_datasets(
    names: Sequence[str], results: Sequence[InteractiveResult], path: str | os.PathLike
) -> None:
    """Save a PNG of the ``top`` track's mIoU against clicks, one line per dataset and their
    average (bold), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    avg = average_results(results)
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, r in zip(names, results, strict=True):
        ax.plot(r.clicks, r.miou_top, marker=".", alpha=0.6, label=name)
    ax.plot(
        avg["clicks"],
        avg["miou_top"],
        marker="o",
        linewidth=2.5,
        color="black",
        label=f"average of {len(results)}",
    )
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU (top track)")
    ax.set_xticks(avg["clicks"])
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())
