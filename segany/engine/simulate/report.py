"""The simulated loop's report: ``report.json`` (everything), ``report.md`` (a Markdown table
per round), ``report.png`` (clicks per mask and held-out mIoU per round, the shape of the SAM
paper's stage-1 figures) and ``masks.jsonl`` (one line per target mask)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...io.files import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["fmt", "markdown_table", "plot_report", "rows_table", "write_report"]


def markdown_table(report: dict[str, Any]) -> str:
    """The rounds as a Markdown table (clicks, seconds and masks per mask / image, final mIoU
    against the truth, the held-out 1/5-point mIoU of the model used, the retrain after it)."""
    cells = rows_table(report["rounds"])
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    return (
        "# Simulated annotation loop\n\n"
        f"data `{c['data']}`, {c['rounds']} rounds x {c['images_per_round']} images, click "
        f"budget {c['click_budget']}, IoU target {c['iou_target']}, {c['seconds_per_click']} s "
        f"per click, model `{c['model']}`, {c['steps']} retrain steps per round; "
        f"{report['seconds']:.0f} s in all.\n\n"
        f"{markdown_table(report)}\n\n"
        "clicks/mask and s/mask are per accepted mask (the server's prompt and accept events); "
        "mIoU vs truth is the final masks' IoU with the hidden truth; held-out is the retrain's "
        "evaluation of the model used in the round (top track); retrain gives the new model's "
        "held-out 1/5-point mIoU and whether the project switched to it.\n"
    )


def plot_report(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Save a PNG: clicks per mask per round (left) and the held-out 1-point and 5-point mIoU
    of the round's model (right). matplotlib's Agg canvas, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    rounds = [r["round"] for r in rows]
    left.plot(rounds, [r["clicks_per_mask"] or 0 for r in rows], marker="o", label="clicks/mask")
    left.set_xlabel("round")
    left.set_ylabel("clicks per mask")
    left.set_xticks(rounds)
    left.grid(True, alpha=0.3)
    ax2 = left.twinx()
    ax2.plot(rounds, [r["seconds_per_mask"] or 0 for r in rows], marker="s", color="tab:orange")
    ax2.set_ylabel("simulated s per mask", color="tab:orange")
    left.set_title("annotation cost per round")
    for key, label in (("heldout_miou_1pt", "1 pt"), ("heldout_miou_5pt", "5 pt")):
        values = [r.get(key) for r in rows]
        right.plot(rounds, [float("nan") if v is None else v for v in values], marker="o",
                   label=f"held-out {label}")  # fmt: skip
    right.plot(rounds, [r["miou_final"] or 0 for r in rows], marker="^", label="final vs truth")
    right.set_xlabel("round")
    right.set_ylabel("mIoU")
    right.set_xticks(rounds)
    right.set_ylim(0, 1)
    right.grid(True, alpha=0.3)
    right.legend(loc="lower right")
    right.set_title("model quality per round")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())


def write_report(
    report: dict[str, Any], out: str | os.PathLike, outcomes: Sequence[dict[str, Any]] = ()
) -> None:
    """Write ``report.json``, ``report.md``, ``report.png`` and ``masks.jsonl`` into ``out``
    (an existing folder), each atomically."""
    out = Path(out)
    write_json_atomic(out / "report.json", report, indent=2, newline=True)
    write_text_atomic(out / "report.md", _markdown(report))
    write_text_atomic(out / "masks.jsonl", "".join(json.dumps(o) + "\n" for o in outcomes))
    plot_report(report["rounds"], out / "report.png")


def fmt(value: float | None) -> str:
    """3 decimals, or ``-`` for None."""
    return "-" if value is None else f"{value:.3f}"


def rows_table(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The report table's cells (header first)."""
    head = [
        "round", "kind", "model", "images", "masks", "clicks/mask", "s/mask", "masks/image",
        "mIoU vs truth", "held-out 1 pt", "held-out 5 pt", "retrain",
    ]  # fmt: skip
    cells = [head]
    for row in rows:
        re_ = row.get("retrain")
        cells.append(
            [
                str(row["round"]), row["kind"],
                os.path.basename(row["model_version"]["name"]) if row["model_version"] else "-",
                str(row["images"]), str(row["masks"]), fmt2(row["clicks_per_mask"]),
                fmt2(row["seconds_per_mask"]), fmt2(row["masks_per_image"]),
                fmt(row["miou_final"]), fmt(row.get("heldout_miou_1pt")),
                fmt(row.get("heldout_miou_5pt")),
                "-" if re_ is None else (
                    f"{re_['new_miou_1pt']:.3f}/{re_['new_miou_5pt']:.3f} "
                    f"{'switched' if re_['switched'] else 'kept'}"
                ),
            ]
        )  # fmt: skip
    return cells


def fmt2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
