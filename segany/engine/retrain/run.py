"""The retrain procedure: snapshot, fine-tune, evaluate, register, switch when better.

:func:`retrain` runs, in order:

1. :func:`.snapshot.snapshot`: the accepted masks of the chosen stages frozen into a dataset
   version, with the fixed held-out split;
2. fine-tuning of the project's current model version with :func:`segany.train.train`
   in-process: the config is :data:`DEFAULT_CONFIG` (a decoder-only fine-tune) or a TOML /
   JSON file of :class:`segany.train.TrainConfig` fields, with ``init`` = the current model's
   file, ``data`` = the snapshot's training folders (the manual masks' images repeated
   ``oversample_manual`` times) and ``out_dir`` = the run folder's ``train/``;
3. evaluation of the current (parent) and the new model on the held-out images with the
   interactive point protocol of :mod:`segany.eval` (fp32; clicks :data:`EVAL_CLICKS`, the
   top-scored track): the **score** is the mean of the 1-point and 5-point mIoU;
4. the ONNX decoder of the new model exported next to its weights (``onnx/``, when the
   ``onnx`` package is installed; the annotation server still exports its own copy into its
   embedding cache on first request);
5. registration of the new model version with its evaluation, its parent and its dataset
   version, in one transaction, only after every file is written: a retrain killed before
   leaves the project as it was (a run folder without ``report.json`` and possibly an unused
   dataset version);
6. the switch (:meth:`Project.switch_model`: the current version and the model the server
   loads) only when the new score is higher than the parent's, or when forced. The embedding
   cache is keyed by the model's fingerprint, so a switched project's images are encoded
   afresh.

Files of a run ``DIR/retrain/r0001/``: ``train/`` (the training run: ``model.safetensors``,
checkpoints, log, curves), ``onnx/`` (``decoder.onnx``, ``manifest.json``),
``eval_parent.json`` and ``eval_new.json`` (:meth:`InteractiveResult.to_dict`) and
``report.json`` (:class:`RetrainResult.to_dict`), written last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io.files import write_json_atomic
from ..store import STAGES, InvalidInput, ModelVersion, Project, file_fingerprint
from .snapshot import HOLDOUT_FRACTION, Snapshot, check_oversample, snapshot

__all__ = [
    "DEFAULT_CONFIG",
    "EVAL_CLICKS",
    "RETRAIN_DIR",
    "RetrainResult",
    "evaluate_model",
    "read_report",
    "retrain",
    "retrain_config",
]

#: The project's subfolder of retrain runs.
RETRAIN_DIR = "retrain"
#: Click counts of the held-out evaluation; the score is the mean top mIoU over them.
EVAL_CLICKS = (1, 5)
#: The default fine-tune: the decoder only (the image encoder frozen), the recipe of the
#: bundled model's decoder stage (``configs/segany_tiny_stage2.toml``: 2 images per step,
#: every step interactive with 3 of its 11 rounds back-propagated, the loss on the low-res
#: logits, ~4-6 s per step for segany_tiny on 2 CPU cores), with a schedule sized for a growing
#: annotation project rather than a large dataset.
DEFAULT_CONFIG: dict[str, Any] = {
    "freeze_image_encoder": True,
    "freeze_prompt_encoder": False,
    "images_per_step": 2,
    "max_masks_per_image": 16,
    "rounds": 11,
    "point_rounds": 8,
    "grad_rounds": 3,
    "loss_resolution": "low",
    "lr": 1e-4,
    "weight_decay": 0.05,
    "warmup_steps": 20,
    "grad_clip": 1.0,
    "steps": 200,
    "checkpoint_every": 50,
    "log_every": 10,
    "precision": "auto",
}


@dataclass(frozen=True)
class RetrainResult:
    """What :func:`retrain` did. ``parent`` and ``new`` are ``{"miou_1pt", "miou_5pt",
    "score", ...}`` evaluations on the held-out images; ``version`` is the registered model
    version (its ``evaluation`` holds ``new`` and the parent's scores)."""

    run_dir: Path
    dataset: Snapshot
    parent_version: ModelVersion
    version: ModelVersion
    parent: dict[str, Any]
    new: dict[str, Any]
    better: bool
    switched: bool
    forced: bool
    onnx_dir: Path | None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        counts = self.dataset.version.counts
        return {
            "run_dir": str(self.run_dir),
            "dataset_version": self.dataset.name,
            "dataset_dir": str(self.dataset.root),
            "content_hash": self.dataset.content_hash,
            "train_images": counts["train/manual"]["images"] + counts["train/other"]["images"],
            "holdout_images": counts["holdout"]["images"],
            "holdout_masks": counts["holdout"]["masks"],
            "parent": {**self.parent_version.to_dict(), "evaluation": self.parent},
            "new": self.version.to_dict(),
            "better": self.better,
            "switched": self.switched,
            "forced": self.forced,
            "onnx_dir": None if self.onnx_dir is None else str(self.onnx_dir),
            "seconds": dict(self.seconds),
        }

    def summary(self) -> str:
        """A few lines: old vs new held-out mIoU, switched or not, where the files are."""
        p, n = self.parent, self.new
        verdict = (
            "switched to the new model" + (" (forced)" if self.forced and not self.better else "")
            if self.switched
            else "kept the current model (the new one is not better)"
        )
        return "\n".join(
            [
                f"dataset {self.dataset.name}: {self.dataset.root}",
                f"held-out mIoU (1 pt / 5 pt) over {n['num_masks']} masks in "
                f"{n['num_images']} images:",
                f"  current {self.parent_version.name} (version {self.parent_version.id}): "
                f"{p['miou_1pt']:.3f} / {p['miou_5pt']:.3f}",
                f"  new     {self.version.name} (version {self.version.id}): "
                f"{n['miou_1pt']:.3f} / {n['miou_5pt']:.3f}",
                verdict,
                f"weights: {self.version.file}",
                f"onnx decoder: {self.onnx_dir or 'not exported (pip install onnx)'}",
                f"report: {self.run_dir / 'report.json'}",
            ]
        )


def retrain_config(config: Any = None, overrides: Sequence[str] = ()) -> Any:
    """The :class:`segany.train.TrainConfig` a retrain starts from: ``config`` (a
    TrainConfig, or a TOML or JSON file of its fields) or :data:`DEFAULT_CONFIG`, then
    ``key=value`` overrides (TOML values). Raises ValueError / FileNotFoundError for a config
    that does not parse or is not valid."""
    from ...train import TrainConfig, load_train_config

    if isinstance(config, TrainConfig):
        base = config
    elif config is None:
        base = TrainConfig().replace(**DEFAULT_CONFIG)
    else:
        return load_train_config(config, overrides)
    if not overrides:
        return base
    parsed = load_train_config(None, overrides).to_dict()
    given = {item.partition("=")[0].strip() for item in overrides}
    return base.replace(**{k: v for k, v in parsed.items() if k in given})


def evaluate_model(
    weights: str | os.PathLike,
    holdout_dir: str | os.PathLike,
    *,
    device: str | None = None,
    clicks: Sequence[int] = EVAL_CLICKS,
    max_masks_per_image: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Evaluate the model file ``weights`` (fp32) on the SA-1B folder ``holdout_dir`` with
    the interactive point protocol. Returns ``({"miou_1pt", "miou_5pt", "score", "clicks",
    "miou_top", "miou_oracle", "num_masks", "num_images"}, the InteractiveResult)``; the
    score is the mean top mIoU over ``clicks``."""
    from ...build import load_model
    from ...data.datasets import SA1BFolder
    from ...eval import evaluate_interactive
    from ...predictor import SamPredictor

    predictor = SamPredictor(load_model(str(weights), precision="fp32", device=device))
    result = evaluate_interactive(
        predictor, SA1BFolder(holdout_dir), clicks=clicks,
        max_masks_per_image=max_masks_per_image, progress=progress,
    )  # fmt: skip
    top = dict(zip(result.clicks, result.miou_top, strict=True))
    summary = {
        "protocol": "sam-interactive-points",
        "clicks": list(result.clicks),
        "miou_top": list(result.miou_top),
        "miou_oracle": list(result.miou_oracle),
        "miou_1pt": top.get(1),
        "miou_5pt": top.get(5),
        "score": sum(result.miou_top) / len(result.miou_top),
        "num_masks": result.num_masks,
        "num_images": result.num_images,
    }
    return summary, result


def _next_run(project: Project) -> Path:
    base = project.root / RETRAIN_DIR
    base.mkdir(exist_ok=True)
    numbers = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(r"r(\d+)", p.name))]
    run = base / f"r{max(numbers, default=0) + 1:04d}"
    run.mkdir()
    return run


def _train(config: Any, device: str | None, progress: bool) -> Path:
    """Run the fine-tune in-process; returns the final model file."""
    from ...train import train
    from ...train.trainer import MODEL_NAME

    train(config, device=device, resume=True, progress=progress)
    return Path(config.out_dir) / MODEL_NAME


def _export_decoder(weights: Path, out: Path, name: str) -> Path | None:
    """The ONNX decoder of ``weights`` in ``out`` (None when onnx is not installed)."""
    if importlib.util.find_spec("onnx") is None:
        return None
    from ...build import load_model
    from ...export import export_onnx

    model = load_model(str(weights), precision="fp32", device="cpu")
    export_onnx(model, out, encoder=False, name=name)
    return out


def _embedding_fingerprint(weights: Path) -> str:
    """The embedding fingerprint of ``weights`` loaded as the server loads a project's model
    (default precision, CPU): the key of its embedding cache."""
    from ...build import load_model
    from ...io.embedding import model_fingerprint

    return model_fingerprint(load_model(str(weights), device="cpu"))


def retrain(
    project: Project,
    *,
    config: Any = None,
    overrides: Sequence[str] = (),
    stages: Iterable[int] = STAGES,
    oversample_manual: int = 1,
    holdout: float = HOLDOUT_FRACTION,
    force_switch: bool = False,
    steps: int | None = None,
    device: str | None = None,
    eval_masks_per_image: int | None = None,
    export_decoder: bool = True,
    progress: bool = False,
) -> RetrainResult:
    """Retrain the project's current model on its accepted masks (module docstring).

    Args:
        config: a training config (a :class:`segany.train.TrainConfig`, or a TOML / JSON
            file of its fields; default :data:`DEFAULT_CONFIG`); ``init``, ``data`` and
            ``out_dir`` are replaced by the current model, the snapshot and the run folder.
        overrides: ``key=value`` changes of the config (TOML values).
        steps: the training steps (default: the config's).
        stages: the data-engine stages whose masks are used (1, 2, 3).
        oversample_manual: the manual masks' images count this many times in training.
        holdout: the fraction of images held out (:func:`.snapshot.holdout_split`).
        force_switch: switch to the new model even when it is not better.
        device: where to train and evaluate (default: CUDA if available).
        eval_masks_per_image: evaluate at most this many masks per held-out image (None: all).
        export_decoder: export the new model's ONNX decoder (when onnx is installed).

    Raises:
        InvalidInput: no current model with a weights file, bad stages / holdout /
            oversampling, no accepted masks, no training or no held-out images with masks.
        ValueError, FileNotFoundError: a config that does not parse or is not valid.
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    parent = project.current_model()
    if parent is None or parent.file is None or not Path(parent.file).is_file():
        where = "none" if parent is None else f"{parent.name}, file {parent.file!r}"
        raise InvalidInput(
            f"the project's current model ({where}) has no local weights file to fine-tune; "
            "serve the project once with a local model (a path or the bundled segany_tiny)"
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InvalidInput(f"steps must be a positive integer; got {steps!r}")
    check_oversample(oversample_manual)
    base = retrain_config(config, overrides)  # parse errors before any work
    snap = snapshot(project, stages=stages, holdout=holdout)
    specs = snap.train_specs(oversample_manual)
    if not specs:
        raise InvalidInput(
            f"dataset {snap.name} has no training images: every image with masks is held out; "
            "add more images or lower the held-out fraction"
        )
    if snap.holdout_dir is None:
        raise InvalidInput(
            f"dataset {snap.name} has no held-out images with masks to evaluate on: the "
            "project needs at least 2 images with accepted masks"
        )
    seconds["snapshot"] = time.perf_counter() - start
    run = _next_run(project)
    changes: dict[str, Any] = {
        "init": parent.file, "data": specs, "out_dir": str(run / "train"),
    }  # fmt: skip
    if steps is not None:
        changes["steps"] = steps
    train_config = base.replace(**changes)
    t = time.perf_counter()
    weights = _train(train_config, device, progress)
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    old_eval, old_result = evaluate_model(
        parent.file, snap.holdout_dir, device=device,
        max_masks_per_image=eval_masks_per_image, progress=progress,
    )  # fmt: skip
    new_eval, new_result = evaluate_model(
        weights, snap.holdout_dir, device=device,
        max_masks_per_image=eval_masks_per_image, progress=progress,
    )  # fmt: skip
    old_result.write_json(run / "eval_parent.json", {"model": parent.file})
    new_result.write_json(run / "eval_new.json", {"model": str(weights)})
    seconds["evaluate"] = time.perf_counter() - t
    better = new_eval["score"] > old_eval["score"]
    switched = better or bool(force_switch)
    name = f"retrain-{run.name}"
    t = time.perf_counter()
    onnx_dir = _export_decoder(weights, run / "onnx", name) if export_decoder else None
    seconds["export"] = time.perf_counter() - t
    evaluation = {
        **new_eval,
        "dataset_version": snap.name,
        "content_hash": snap.content_hash,
        "parent": {"id": parent.id, "name": parent.name, **old_eval},
        "better": better,
        "train": {"steps": train_config.steps, "oversample_manual": oversample_manual,
                  "stages": list(snap.version.stages), "run_dir": str(run)},
    }  # fmt: skip
    version = project.register_model(
        name, file_fingerprint(weights), str(weights), parent=parent,
        dataset_version=snap.version, evaluation=evaluation, make_current=False,
    )  # fmt: skip
    project.record_embedding_fingerprint(_embedding_fingerprint(weights), version)
    if switched:
        version = project.switch_model(version)
    seconds["total"] = time.perf_counter() - start
    result = RetrainResult(
        run_dir=run, dataset=snap, parent_version=parent, version=version, parent=old_eval,
        new=new_eval, better=better, switched=switched, forced=bool(force_switch),
        onnx_dir=onnx_dir, seconds=seconds,
    )  # fmt: skip
    write_json_atomic(run / "report.json", result.to_dict(), indent=2, newline=True)
    return result


def read_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``report.json`` of a finished run folder."""
    return json.loads((Path(run_dir) / "report.json").read_text(encoding="utf-8"))
