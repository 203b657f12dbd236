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
    "markdown_table",
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


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(
    columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, Any]]], *, first: str = ""
) -> str:
    """A Markdown table: one row per ``(label, values)``, one column per name in ``columns``
    (a value missing from a row is shown as ``–``; floats with 3 decimals)."""
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
) -> dict[str, Any]:
    """Write ``OUT/results.json`` and ``OUT/results.md`` (atomically) and return the results.

    ``columns``: the metric names of the table (default: every metric); ``paper``: the paper's
    entry to show beside ours (default ``PAPER[task]``; pass ``{}`` for none); ``extra_md`` is
    appended to the Markdown (further tables, plot links)."""
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
