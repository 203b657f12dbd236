"""COCO and LVIS annotations, and the metrics of the proposal and instance tasks, computed by
pycocotools itself (a thin wrapper: the numbers are ``COCOeval.stats``, unchanged).

* :func:`load_annotations` reads a COCO or LVIS instances JSON into a ``pycocotools`` ``COCO``
  (quietly). LVIS has no ``iscrowd`` (every annotation gets ``iscrowd: 0``) and its images have
  ``coco_url`` instead of ``file_name`` (the URL's last segment becomes the file name).
* :func:`proposal_recall`: class-agnostic mask average recall (``iouType="segm"``,
  ``useCats=0``) at 10, 100 and 1000 proposals per image, for all, small, medium and large
  objects, and on LVIS annotations for the frequent, common and rare categories (the ground
  truth restricted to each group; the proposals are the same).
* :func:`mask_ap`: COCO mask AP, AP50, AP75 and AP for small, medium and large objects. On LVIS
  annotations this is the COCO protocol applied to LVIS (not LVIS's federated evaluation).

Results are COCO results dicts: ``{"image_id", "category_id", "segmentation": <COCO RLE>,
"score"}``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .common import read_json

__all__ = [
    "LVIS_GROUPS",
    "is_lvis",
    "load_annotations",
    "mask_ap",
    "proposal_recall",
    "restrict",
]

#: LVIS category frequency groups: the ``frequency`` letter and the metric name's word.
LVIS_GROUPS: dict[str, str] = {"f": "frequent", "c": "common", "r": "rare"}

_AP_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


@contextlib.contextmanager
def _quiet() -> Any:
    """pycocotools prints progress to stdout; keep it off ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _coco(dataset: Mapping[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    with _quiet():
        coco.createIndex()
    return coco


def _check_dataset(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: an instances JSON must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where}: needs a list {key!r} (COCO or LVIS instances format)")
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise ValueError(f"{where}: images[{i}] needs an integer 'id'")
        for key in ("height", "width"):
            if not isinstance(im.get(key), int) or im[key] < 1:
                raise ValueError(f"{where}: images[{i}] needs a positive integer {key!r}")
        if not isinstance(im.get("file_name") or im.get("coco_url"), str):
            raise ValueError(f"{where}: images[{i}] needs 'file_name' (or LVIS 'coco_url')")
    ids = {im["id"] for im in data["images"]}
    cats = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or a.get("image_id") not in ids:
            raise ValueError(f"{where}: annotations[{i}] has no known 'image_id'")
        if a.get("category_id") not in cats:
            raise ValueError(f"{where}: annotations[{i}] has no known 'category_id'")
        if "segmentation" not in a or "area" not in a or "bbox" not in a:
            raise ValueError(f"{where}: annotations[{i}] needs 'segmentation', 'area' and 'bbox'")


def is_lvis(coco: Any) -> bool:
    """Whether the annotations are LVIS-style (categories with a ``frequency``)."""
    cats = coco.dataset.get("categories", [])
    return bool(cats) and all(c.get("frequency") in LVIS_GROUPS for c in cats)


def load_annotations(path: str | os.PathLike | Mapping[str, Any] | Any) -> Any:
    """A ``pycocotools.coco.COCO`` of a COCO or LVIS instances JSON (a path or the loaded
    dict), with LVIS's missing ``iscrowd`` and ``file_name`` filled in (see the module doc);
    a ``COCO`` made by this function is returned as it is.

    Raises:
        ValueError: the file is not JSON or not an instances file (says what is missing).
    """
    if hasattr(path, "dataset") and hasattr(path, "getImgIds"):
        return path  # already loaded
    where = str(path) if not isinstance(path, Mapping) else "annotations"
    data = copy.deepcopy(dict(path)) if isinstance(path, Mapping) else read_json(path)
    _check_dataset(data, where)
    for im in data["images"]:
        if not im.get("file_name"):
            im["file_name"] = im["coco_url"].rsplit("/", 1)[-1]
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)
    coco = _coco(data)
    coco.source = where
    return coco


def restrict(
    coco: Any, *, image_ids: Iterable[int] | None = None, frequency: str | None = None
) -> Any:
    """A copy of ``coco`` with only the images ``image_ids`` and/or only the annotations of the
    LVIS categories of ``frequency`` (``"f"``, ``"c"`` or ``"r"``)."""
    data = dict(coco.dataset)
    anns = data["annotations"]
    if image_ids is not None:
        keep = set(image_ids)
        data["images"] = [im for im in data["images"] if im["id"] in keep]
        anns = [a for a in anns if a["image_id"] in keep]
    if frequency is not None:
        if frequency not in LVIS_GROUPS:
            raise ValueError(f"frequency must be one of {sorted(LVIS_GROUPS)}, got {frequency!r}")
        cats = {c["id"] for c in data["categories"] if c.get("frequency") == frequency}
        anns = [a for a in anns if a["category_id"] in cats]
    data["annotations"] = anns
    return _coco(data)


def _evaluate(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    use_cats: bool,
    max_dets: Sequence[int],
) -> np.ndarray:
    """``COCOeval(gt, results, "segm").stats`` with these parameters (zeros without results)."""
    from pycocotools.cocoeval import COCOeval

    if not results or not gt.getAnnIds(imgIds=list(image_ids)):
        return np.zeros(12)
    with _quiet():
        # loadRes adds fields to the dicts it gets: give it copies (numpy values as lists)
        dt = gt.loadRes(
            [
                {
                    k: v.tolist() if isinstance(v, np.ndarray) else copy.deepcopy(v)
                    for k, v in r.items()
                }
                for r in results
            ]
        )
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.useCats = int(use_cats)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def _check_results(results: Sequence[Mapping[str, Any]], image_ids: set[int]) -> None:
    for i, r in enumerate(results):
        if r.get("image_id") not in image_ids:
            raise ValueError(f"results[{i}]: image_id {r.get('image_id')!r} is not evaluated")
        seg = r.get("segmentation")
        if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
            raise ValueError(f"results[{i}]: needs a COCO RLE 'segmentation' {{size, counts}}")
        if not isinstance(r.get("score"), (int, float)):
            raise ValueError(f"results[{i}]: needs a numeric 'score'")


def proposal_recall(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
    max_dets: Sequence[int] = (10, 100, 1000),
) -> dict[str, float]:
    """Class-agnostic mask AR of ``results`` against ``gt`` on ``image_ids`` (default: all).

    Returns ``AR@K`` for each K of ``max_dets`` (3 values, increasing), ``AR_small@K``,
    ``AR_medium@K``, ``AR_large@K`` at the largest K, and on LVIS annotations
    ``AR_frequent@K``, ``AR_common@K``, ``AR_rare@K`` (the ground truth of each group only).
    Each value is pycocotools' own (``COCOeval.stats[6:12]``; ``-1`` where there is no ground
    truth of that size or group).
    """
    if len(max_dets) != 3 or list(max_dets) != sorted(set(max_dets)) or min(max_dets) < 1:
        raise ValueError(f"max_dets must be 3 increasing positive counts, got {max_dets}")
    ids = list(gt.getImgIds() if image_ids is None else image_ids)
    _check_results(results, set(ids))
    stats = _evaluate(gt, results, ids, use_cats=False, max_dets=max_dets)
    k = max_dets[-1]
    out = {f"AR@{m}": float(stats[6 + i]) for i, m in enumerate(max_dets)}
    for j, size in enumerate(("small", "medium", "large")):
        out[f"AR_{size}@{k}"] = float(stats[9 + j])
    if is_lvis(gt):
        for letter, word in LVIS_GROUPS.items():
            group = restrict(gt, frequency=letter)
            s = _evaluate(group, results, ids, use_cats=False, max_dets=max_dets)
            has = bool(group.getAnnIds(imgIds=ids))
            out[f"AR_{word}@{k}"] = float(s[8]) if has else -1.0
    return out


def mask_ap(
    gt: Any, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """COCO mask AP of ``results`` (with categories) against ``gt`` on ``image_ids``:
    ``AP``, ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large``
    (``COCOeval.stats[0:6]``, 100 detections per image as COCO)."""
    ids = list(gt.getImgIds() if image_ids is None else image_ids)
    _check_results(results, set(ids))
    for i, r in enumerate(results):
        if r.get("category_id") not in gt.cats:
            raise ValueError(f"results[{i}]: category_id {r.get('category_id')!r} is unknown")
    stats = _evaluate(gt, results, ids, use_cats=True, max_dets=(1, 10, 100))
    return {name: float(stats[i]) for i, name in enumerate(_AP_NAMES)}
