"""Reading and writing a training run's files: checkpoints, safetensors state dicts, the JSONL
logs and the curves plot. Every file but the appended logs is written atomically
(:func:`segany.io.files.atomic_write`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_write


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only`` unpickling: tensors and plain data)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RuntimeError(f"cannot read training checkpoint {path}: {e}") from e


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training checkpoint (``torch.save``) atomically."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def rng_state() -> dict[str, Any]:
    """Global RNG states (tensors only, so checkpoints load with ``weights_only``). Batches
    and prompts do not depend on them: they come from generators seeded by the step."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a SAM state dict (official names) as safetensors in ``dtype``, atomically and
    world-readable (it is a shareable artifact)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt", "producer": "segany.train", **(metadata or {})}
    with atomic_write(path, mode=0o644) as tmp:
        save_file(sd, str(tmp), metadata=meta)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (a log grows line by line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; a run resumed after a crash may have logged a step
    twice — the later record wins."""
    records: dict[int, dict[str, Any]] = {}
    p = Path(path)
    if not p.exists():
        return []
    for line in p.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[int(r["step"])] = r
    return [records[k] for k in sorted(records)]


def plot_curves(
    log_path: str | os.PathLike,
    png_path: str | os.PathLike,
    val_path: str | os.PathLike | None = None,
) -> None:
    """Plot loss terms and first/last-round IoU against step into a PNG (atomically), and
    the validation mIoU per click count when ``val_path`` (a ``val.jsonl``) has records."""
    records = read_log(log_path)
    if not records:
        return
    val = read_log(val_path) if val_path is not None else []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 4 if val else 3, figsize=(20 if val else 15, 4))
    if val:
        same = [r for r in val if r["clicks"] == val[-1]["clicks"]]  # val_clicks may change
        for j, k in enumerate(val[-1]["clicks"]):
            ys = [r["top"][j] for r in same]
            axes[3].plot([r["step"] for r in same], ys, marker="o", label=f"{k} pt")
        axes[3].set_title("validation mIoU (top-scored mask)")
        axes[3].legend()
    for key in ("loss", "dice", "iou_mse"):
        if key in records[0]:
            axes[0].plot(steps, [r[key] for r in records], label=key)
    axes[0].set_yscale("log")
    axes[0].set_title("loss (mean over rounds)")
    axes[0].legend()
    if "focal" in records[0]:
        axes[1].plot(steps, [r["focal"] for r in records], label="focal")
        axes[1].set_yscale("log")
        axes[1].set_title("focal")
    for key, label in (("iou_first", "first prompt"), ("iou_last", "last round")):
        if key in records[0]:
            axes[2].plot(steps, [r[key] for r in records], label=label)
    axes[2].set_ylim(0, 1)
    axes[2].set_title("training IoU of the selected mask")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_write(png_path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
