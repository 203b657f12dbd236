"""What the zero-shot commands share: the paper's numbers, ``results.json`` and ``results.md``
writers, and a per-image result cache that makes a run resumable.

A run writes ``OUT/results.json``::

    {"task": "proposals", "metrics": {"AR@1000": 0.52, ...}, "paper": {...}, "model": {...},
     "settings": {...}, "times": {"images": N, "seconds_per_image": s, "total_s": t},
     "segany_version": "..."}

and ``OUT/results.md``: a Markdown table of the metrics in the paper's layout, with the paper's
SAM (ViT-H) row beside ours, labelled as the paper's numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.files import write_json_atomic, write_text_atomic

__all__ = [
    "PAPER",
    "ImageCache",
    "image_entries",
    "read_json",
    "markdown_table",
    "run_images",
    "write_results",
]

#: The SAM paper's numbers (ViT-H, Tables 3-5), by task and metric name, on the datasets named.
PAPER: dict[str, dict[str, Any]] = {
    "edges": {
        "dataset": "BSDS500 test",
        "metrics": {"ODS": 0.768, "OIS": 0.786, "AP": 0.794, "R50": 0.928},
    },
    "proposals": {
        "dataset": "LVIS v1 val",
        "metrics": {
            "AR@1000": 0.593,
            "AR_small@1000": 0.455,
            "AR_medium@1000": 0.816,
            "AR_large@1000": 0.869,
            "AR_frequent@1000": 0.591,
            "AR_common@1000": 0.639,
            "AR_rare@1000": 0.658,
        },
    },
    "instances": {
        "dataset": "COCO val2017 / LVIS v1 val, ViTDet-H boxes",
        "metrics": {
            "AP": 0.465,
            "AP_small": 0.308,
            "AP_medium": 0.510,
            "AP_large": 0.617,
        },
        "lvis_metrics": {"AP": 0.447, "AP_small": 0.325, "AP_medium": 0.576, "AP_large": 0.655},
    },
}


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in the file ``path``; ValueError saying why for a file that cannot be
    read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        # pycocotools' -1: no ground truth of that size or group
        return "n/a" if value == -1.0 else f"{value:.3f}"
    return str(value)


def markdown_table(
    columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, Any]]], *, first: str = ""
) -> str:
    """A Markdown table: one row per ``(label, values)``, one column per name in ``columns``
    (a value missing from a row is shown as ``–``, pycocotools' -1 as ``n/a``; floats with 3
    decimals)."""
    head = "| " + " | ".join([first, *columns]) + " |"
    rule = "|---|" + "---:|" * len(columns)
    body = [
        "| " + " | ".join([label, *(_fmt(values.get(c)) for c in columns)]) + " |"
        for label, values in rows
    ]
    return "\n".join([head, rule, *body]) + "\n"


def write_results(
    out: str | os.PathLike,
    task: str,
    metrics: Mapping[str, Any],
    *,
    model: Mapping[str, Any],
    settings: Mapping[str, Any],
    times: Mapping[str, Any],
    columns: Sequence[str] | None = None,
    paper: Mapping[str, Any] | None = None,
    extra_md: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``OUT/results.json`` and ``OUT/results.md`` (atomically) and return the results.

    ``columns``: the metric names of the table (default: every metric); ``paper``: the paper's
    entry to show beside ours (default ``PAPER[task]``; pass ``{}`` for none); ``extra_md`` is
    appended to the Markdown (further tables, plot links); ``extra`` keys are added to the
    results (e.g. ``overlays``)."""
    out = Path(out)
    paper = PAPER.get(task, {}) if paper is None else paper
    results = {
        "task": task,
        "metrics": dict(metrics),
        "paper": dict(paper),
        "model": dict(model),
        "settings": dict(settings),
        "times": dict(times),
        "segany_version": __version__,
        **(dict(extra) if extra else {}),
    }
    write_json_atomic(out / "results.json", results)
    cols = list(columns or metrics.keys())
    rows = [(f"segany ({model.get('name', 'model')}, this run)", metrics)]
    if paper.get("metrics"):
        rows.append(
            (f"SAM ViT-H, the paper's numbers ({paper.get('dataset', '')})", paper["metrics"])
        )
    text = f"# Zero-shot {task}\n\n" + markdown_table(cols, rows) + "\n"
    n = times.get("images")
    spi = times.get("seconds_per_image")
    if n is not None and spi is not None:
        text += f"{n} images, {spi:.2f} s per image.\n"
    write_text_atomic(out / "results.md", text + extra_md)
    return results


class ImageCache:
    """Per-image results in ``OUT/cache/`` (one JSON file per image, written atomically), so a
    run that was killed resumes: :meth:`get` gives what a finished image stored, or None.

    ``key`` is recorded in every file: results made with other settings (another model, other
    thresholds) are not reused."""

    def __init__(self, out: str | os.PathLike, key: Mapping[str, Any]) -> None:
        self.dir = Path(out) / "cache"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = json.loads(json.dumps(dict(key), sort_keys=True))

    def _path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
        return self.dir / f"{safe}.json"

    def get(self, name: str) -> Any | None:
        path = self._path(name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != self.key or data.get("name") != str(name):
            return None
        return data.get("value")

    def put(self, name: str, value: Any) -> None:
        write_json_atomic(self._path(name), {"key": self.key, "name": str(name), "value": value})


def image_entries(
    coco: Any, images_dir: str | os.PathLike, max_images: int | None = None
) -> list[dict[str, Any]]:
    """The images of ``coco`` (a pycocotools ``COCO``) in id order, the first ``max_images``,
    each ``{"id", "file_name", "height", "width", "path"}`` with ``path`` under ``images_dir``.

    Raises:
        ValueError: ``images_dir`` is not a folder, ``max_images`` is not positive, a file name
        leaves the folder (``..``, absolute) or an image file is missing (the first few named).
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise ValueError(f"--images {images_dir}: not a folder")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_images}")
    ids = sorted(coco.getImgIds())
    if max_images is not None:
        ids = ids[:max_images]
    base = root.resolve()
    entries, missing = [], []
    for im in coco.loadImgs(ids):
        name = str(im["file_name"])
        path = (root / name).resolve()
        if Path(name).is_absolute() or base not in path.parents:
            raise ValueError(f"image {im['id']}: file_name {name!r} leaves the images folder")
        if not path.is_file():
            missing.append(name)
        entries.append(
            {
                "id": int(im["id"]),
                "file_name": name,
                "height": int(im["height"]),
                "width": int(im["width"]),
                "path": path,
            }
        )
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"images missing from {images_dir}: {', '.join(missing[:3])}{more}")
    return entries


def run_images(
    entries: Sequence[Mapping[str, Any]],
    cache: ImageCache,
    work: Any,
    *,
    desc: str,
    progress: bool = True,
) -> tuple[dict[int, Any], dict[str, Any]]:
    """``work(entry, image)`` for every entry not in ``cache`` (``image`` ``(H, W, 3)`` uint8
    RGB, checked against the entry's height and width), each result cached at once; returns
    ``{image_id: result}`` for all entries and the times (``images``, ``computed``,
    ``cached``, ``seconds_per_image`` over the computed ones, ``total_s``).

    Raises:
        ValueError: an image that cannot be read, or whose size differs from its record.
    """
    import time

    from tqdm import tqdm

    from ..io.image import load_image

    out: dict[int, Any] = {}
    spent, computed = 0.0, 0
    t_start = time.perf_counter()
    bar = tqdm(entries, desc=desc, unit="image", disable=not progress, leave=False)
    for entry in bar:
        key = str(entry["id"])
        hit = cache.get(key)
        if hit is not None:
            out[entry["id"]] = hit
            continue
        try:
            image = load_image(entry["path"])
        except Exception as e:  # noqa: BLE001 - any decoder error is bad input here
            raise ValueError(f"cannot read image {entry['file_name']}: {e}") from None
        if image.shape[:2] != (entry["height"], entry["width"]):
            raise ValueError(
                f"image {entry['file_name']} is {image.shape[1]}x{image.shape[0]} but its "
                f"record says {entry['width']}x{entry['height']}"
            )
        t0 = time.perf_counter()
        value = work(entry, image)
        spent += time.perf_counter() - t0
        computed += 1
        cache.put(key, value)
        out[entry["id"]] = value
    bar.close()
    times = {
        "images": len(entries),
        "computed": computed,
        "cached": len(entries) - computed,
        "seconds_per_image": spent / computed if computed else None,
        "total_s": time.perf_counter() - t_start,
    }
    return out, times
