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
        f"data `{c['data']}`, rounds {', '.join(c['round_kinds'])} x {c['images_per_round']} "
        "images, click "
        f"budget {c['click_budget']}, IoU target {c['iou_target']}, {c['seconds_per_click']} s "
        f"per click, model `{c['model']}`, {c['steps']} retrain steps after each manual and prefill round; "
        f"{report['seconds']:.0f} s in all.\n\n"
        f"{markdown_table(report)}\n\n"
        "clicks/mask and s/mask are per accepted mask made by clicks (the server's prompt and "
        "accept events); s/image is all simulated time per image (clicks, and in prefill "
        "rounds the proposal reviews); masks/image counts accepted proposals too; proposals: "
        "made (accepted/rejected); auto: the automatic masks against the truth (recall of the "
        "true masks at IoU 0.5 and at the target, precision at 0.5, mIoU of the matched); "
        "mIoU vs truth is the final masks' IoU with the hidden truth; held-out is the retrain's "
        "evaluation of the model used in the round (top track); retrain gives the new model's "
        "held-out 1/5-point mIoU and whether the project switched to it.\n"
    )


def _values(rows: Sequence[dict[str, Any]], get: Any) -> list[float]:
    """One number per row, NaN where it does not apply (None): a gap in the plot."""
    return [float("nan") if (v := get(r)) is None else float(v) for r in rows]


def _auto(row: dict[str, Any], key: str) -> Any:
    return (row.get("auto") or {}).get(key)


def plot_report(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Save a PNG: clicks and simulated seconds per clicked mask per round (left), masks per
    image by stage (middle), and the held-out 1-point and 5-point mIoU of the round's model,
    the final masks' mIoU against the truth and, for ``auto`` rounds, the recall at IoU 0.5
    and the precision (right). Rounds without a number leave a gap. matplotlib's Agg canvas,
    no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    left, middle, right = fig.subplots(1, 3)
    rounds = [r["round"] for r in rows]
    left.plot(rounds, _values(rows, lambda r: r["clicks_per_mask"]), marker="o")
    left.set_xlabel("round")
    left.set_ylabel("clicks per clicked mask")
    left.set_xticks(rounds)
    left.grid(True, alpha=0.3)
    ax2 = left.twinx()
    ax2.plot(rounds, _values(rows, lambda r: r["seconds_per_mask"]), marker="s",
             color="tab:orange")  # fmt: skip
    ax2.set_ylabel("simulated s per clicked mask", color="tab:orange")
    left.set_title("annotation cost per round")
    colors = {1: "tab:blue", 2: "tab:green", 3: "tab:purple"}
    middle.bar(rounds, _values(rows, lambda r: r["masks_per_image"]),
               color=[colors.get(r["stage"], "tab:gray") for r in rows])  # fmt: skip
    middle.set_xlabel("round (blue: stage 1, green: 2, purple: 3)")
    middle.set_ylabel("masks per image")
    middle.set_xticks(rounds)
    middle.grid(True, alpha=0.3, axis="y")
    middle.set_title("masks per image per round")
    for key, label in (("heldout_miou_1pt", "1 pt"), ("heldout_miou_5pt", "5 pt")):
        right.plot(rounds, _values(rows, lambda r, k=key: r.get(k)), marker="o",
                   label=f"held-out {label}")  # fmt: skip
    right.plot(rounds, _values(rows, lambda r: r["miou_final"]), marker="^", label="final vs truth")
    right.plot(rounds, _values(rows, lambda r: _auto(r, "recall_50")), marker="D", ls="none",
               label="auto recall@0.5")  # fmt: skip
    right.plot(rounds, _values(rows, lambda r: _auto(r, "precision")), marker="x", ls="none",
               label="auto precision")  # fmt: skip
    right.set_xlabel("round")
    right.set_ylabel("mIoU / fraction")
    right.set_xticks(rounds)
    right.set_ylim(0, 1)
    right.grid(True, alpha=0.3)
    right.legend(loc="lower right", fontsize="small")
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
    """The report table's cells (header first); ``-`` where a number does not apply."""
    head = [
        "round", "kind", "stage", "model", "images", "masks", "clicks/mask", "s/mask",
        "s/image", "masks/image", "proposals (acc/rej)", "mIoU vs truth",
        "auto recall 0.5/target", "auto precision", "auto mIoU", "held-out 1 pt",
        "held-out 5 pt", "retrain",
    ]  # fmt: skip
    cells = [head]
    for row in rows:
        re_ = row.get("retrain")
        pre = row.get("prefill")
        auto = row.get("auto")
        cells.append(
            [
                str(row["round"]), row["kind"], str(row.get("stage", "-")),
                os.path.basename(row["model_version"]["name"]) if row["model_version"] else "-",
                str(row["images"]), str(row["masks"]), fmt2(row["clicks_per_mask"]),
                fmt2(row["seconds_per_mask"]), fmt2(row.get("seconds_per_image")),
                fmt2(row["masks_per_image"]),
                "-" if pre is None else (
                    f"{pre['proposals']} ({pre['accepted']}/{pre['rejected']})"
                ),
                fmt(row["miou_final"]),
                "-" if auto is None else (
                    f"{fmt(auto['recall_50'])}/{fmt(auto['recall_target'])}"
                ),
                "-" if auto is None else fmt(auto["precision"]),
                "-" if auto is None else fmt(auto["miou_matched"]),
                fmt(row.get("heldout_miou_1pt")), fmt(row.get("heldout_miou_5pt")),
                "-" if re_ is None else (
                    f"{re_['new_miou_1pt']:.3f}/{re_['new_miou_5pt']:.3f} "
                    f"{'switched' if re_['switched'] else 'kept'}"
                ),
            ]
        )  # fmt: skip
    return cells


def fmt2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
