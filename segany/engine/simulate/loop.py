"""The simulated data-engine loop: rounds of annotation on fresh images of a hidden-truth
dataset, each followed by a retrain of the project's model on the masks collected so far.

A round (:func:`run_simulation`):

1. the round's images (fresh: the next ``images_per_round`` of a seeded permutation of the
   dataset) are uploaded through ``POST /api/images`` of a new annotation server on the
   project's *current* model (a new app, so a model switched by the last retrain is loaded);
2. a new annotator (``sim-rNN``, one per round, so :meth:`Project.stats` groups by round)
   annotates them with the interactive protocol (:class:`.annotator.SimulatedAnnotator`);
3. the round's numbers are read back from the server's own event log (:meth:`Project.stats`
   for the round's annotator), next to the per-mask outcomes;
4. :func:`segany.engine.retrain.retrain` fine-tunes the model on every accepted mask so far,
   evaluates parent and new model on the held-out images (1-point and 5-point mIoU) and
   switches to the new one only when it is better.

Rounds have a kind (:data:`ROUND_KINDS`, a schedule: :func:`parse_schedule`): ``manual``
(stage 1, :func:`annotate_round`), ``prefill`` (stage 2) and ``auto`` (stage 3), the last two
in :mod:`.stages`. A retrain follows ``manual`` and ``prefill`` rounds, as in the SAM paper
(whose stage-3 masks were the released dataset), not ``auto`` rounds. ``round_hooks`` replaces
or adds the function of a kind (given the :class:`RoundContext`, returning the outcomes).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..prefill.settings import ARCHS, METHODS
from ..stages.spec import PRESETS
from .annotator import MaskOutcome, SimulatedAnnotator, check_protocol, target_order
from .context import ROUND_KINDS, RoundContext, parse_schedule
from .report import fmt, write_report
from .stages import STAGE_HOOKS

__all__ = [
    "ROUND_KINDS",
    "RoundContext",
    "SimulationConfig",
    "annotate_round",
    "check_config",
    "parse_schedule",
    "run_simulation",
]

#: The :meth:`Project.stats` numbers of a round's annotator kept in its row.
EVENT_LOG_KEYS = (
    "masks", "accepted", "prompts", "clicks_per_mask", "seconds_per_mask", "masks_per_image",
    "images_done",
)  # fmt: skip


@dataclass(frozen=True)
class SimulationConfig:
    """What :func:`run_simulation` runs.

    Attributes:
        data: the hidden-truth dataset (:func:`segany.data.datasets.open_dataset` spec:
            ``procedural:N[:seed]``, an SA-1B folder, a COCO ``.json``).
        out: the output folder (the project goes to ``out/project``; it must not hold a
            simulation yet).
        rounds, images_per_round: rounds, and fresh images per round.
        click_budget, iou_target, seconds_per_click: the annotator's protocol and time model.
        brush_seconds: None, or the seconds of correcting by hand a mask that missed the
            target (the truth is then stored; :class:`.annotator.SimulatedAnnotator`).
        masks_per_image: annotate at most this many true masks per image (None: all).
        model: the starting model (a local weights file, or the bundled ``segany_tiny``).
        steps: retrain steps after each round (0: no retrain).
        retrain_config: a :class:`segany.train.TrainConfig` or TOML/JSON file for the retrains
            (default: the retrain's decoder-only default).
        retrain_overrides: ``key=value`` changes of it.
        eval_masks_per_image: held-out evaluation masks per image (None: all).
        holdout: the held-out fraction of the retrains.
        seed: the image order's seed.
        round_kinds: the kind of each round (default: every round ``manual``).
        device: where the retrains train and evaluate (and the prefill and the automatic
            generator run).
        prefill_method: ``prefill`` rounds: ``auto`` or ``detector`` (None: ``detector`` once
            the accepted manual masks cover :data:`.stages.DETECTOR_MIN_IMAGES` images, else
            ``auto``); ``prefill_min_score`` its ``min_score`` (None: the method's default).
        seconds_per_review: simulated seconds of accepting or rejecting one proposal.
        detector_steps, detector_arch: the detector trained before the first ``detector``
            prefill (on the CPU).
        auto_preset: ``auto`` rounds: the generator preset (``default`` or ``sa1b``).
        points_per_side: None, or the automatic generator's grid of ``auto`` rounds and of
            ``auto`` prefill.
    """

    data: Any
    out: Path
    rounds: int = 3
    images_per_round: int = 8
    click_budget: int = 20
    iou_target: float = 0.9
    seconds_per_click: float = 1.5
    brush_seconds: float | None = None
    masks_per_image: int | None = None
    model: str = "segany_tiny"
    steps: int = 100
    retrain_config: Any = None
    retrain_overrides: tuple[str, ...] = ()
    eval_masks_per_image: int | None = None
    holdout: float = 0.1
    seed: int = 0
    round_kinds: tuple[str, ...] = ()
    device: str | None = None
    prefill_method: str | None = None
    prefill_min_score: float | None = None
    seconds_per_review: float = 1.0
    detector_steps: int = 20
    detector_arch: str = "tiny"
    auto_preset: str = "default"
    points_per_side: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def kinds(self) -> tuple[str, ...]:
        return self.round_kinds or ("manual",) * self.rounds


RoundFn = Callable[[RoundContext], list[MaskOutcome]]


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1; got {value!r}")


def check_config(config: SimulationConfig) -> None:
    """ValueError for a config that cannot run (before any work)."""
    _positive(config.rounds, "rounds")
    _positive(config.images_per_round, "images per round")
    check_protocol(config.click_budget, config.iou_target, config.seconds_per_click)
    if config.brush_seconds is not None and not config.brush_seconds >= 0:
        raise ValueError(f"brush seconds must be >= 0 or None; got {config.brush_seconds!r}")
    if config.masks_per_image is not None:
        _positive(config.masks_per_image, "masks per image")
    if config.eval_masks_per_image is not None:
        _positive(config.eval_masks_per_image, "eval masks per image")
    if isinstance(config.steps, bool) or not isinstance(config.steps, int) or config.steps < 0:
        raise ValueError(f"steps must be an integer >= 0; got {config.steps!r}")
    kinds = config.kinds()
    if len(kinds) != config.rounds:
        raise ValueError(f"round_kinds names {len(kinds)} rounds; rounds is {config.rounds}")
    bad = [k for k in kinds if k not in ROUND_KINDS]
    if bad:
        raise ValueError(f"unknown round kinds {bad}; allowed: {', '.join(ROUND_KINDS)}")
    if config.prefill_method is not None and config.prefill_method not in METHODS:
        raise ValueError(
            f"prefill method must be one of {', '.join(METHODS)} or None; "
            f"got {config.prefill_method!r}"
        )
    score = config.prefill_min_score
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1
    ):
        raise ValueError(f"prefill min score must be in [0, 1] or None; got {score!r}")
    review = config.seconds_per_review
    if isinstance(review, bool) or not isinstance(review, (int, float)) or not review >= 0:
        raise ValueError(f"seconds per review must be >= 0; got {review!r}")
    _positive(config.detector_steps, "detector steps")
    if config.detector_arch not in ARCHS:
        raise ValueError(
            f"detector arch must be one of {', '.join(ARCHS)}; got {config.detector_arch!r}"
        )
    if config.auto_preset not in PRESETS:
        raise ValueError(
            f"auto preset must be one of {', '.join(PRESETS)}; got {config.auto_preset!r}"
        )
    if config.points_per_side is not None:
        _positive(config.points_per_side, "points per side")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _check(response: Any, what: str) -> Any:
    from .annotator import SimulationError

    if response.status_code >= 400:
        raise SimulationError(f"{what} -> {response.status_code}: {response.text}")
    return response.json()


def annotate_round(ctx: RoundContext) -> list[MaskOutcome]:
    """A stage-1 (``manual``) round: the simulated annotator annotates every target mask of
    every image of the round."""
    cfg = ctx.config
    annotator = SimulatedAnnotator.for_round(ctx)
    outcomes: list[MaskOutcome] = []
    for image_id, index in ctx.images:
        truth = np.asarray(ctx.dataset[index].masks, bool)
        targets = target_order(truth, cfg.masks_per_image)
        outcomes += annotator.annotate_image(image_id, truth, targets)
    return outcomes


def _round_row(
    number: int, kind: str, annotator: str, outcomes: list[MaskOutcome], stats: dict[str, Any],
    model: Any, n_images: int, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    stage = ROUND_KINDS[kind]
    group = _annotator_numbers(stats, annotator, stage)
    accepted = [o for o in outcomes if o.accepted]
    clicks = sum(o.clicks for o in outcomes)
    latency = sum(o.latency_s for o in outcomes)
    return {
        "round": number,
        "kind": kind,
        "stage": stage,
        "annotator": annotator,
        "model_version": None if model is None else {"id": model.id, "name": model.name},
        "images": n_images,
        "targets": len(outcomes),
        "masks": len(accepted),
        "discarded": len(outcomes) - len(accepted),
        "clicks": clicks,
        "clicks_per_mask": clicks / len(accepted) if accepted else None,
        "seconds_per_mask": (
            sum(o.elapsed_ms for o in accepted) / 1000 / len(accepted) if accepted else None
        ),
        "masks_per_image": len(accepted) / n_images if n_images else None,
        "seconds_per_image": (
            sum(o.elapsed_ms for o in outcomes) / 1000 / n_images if n_images else None
        ),
        "miou_final": float(np.mean([o.iou for o in outcomes])) if outcomes else None,
        "reached_target": sum(o.reached for o in outcomes),
        "brushed": sum(o.brushed for o in outcomes),
        "latency_ms_per_click": 1000 * latency / clicks if clicks else None,
        "event_log": None if group is None else {k: group[k] for k in EVENT_LOG_KEYS},
        "seconds": seconds,
    }


def _annotator_numbers(stats: dict[str, Any], annotator: str, stage: int) -> dict | None:
    """The :meth:`Project.stats` numbers of one round's annotator: its group of ``stage``,
    with the counts summed over all its groups (a round's annotator works on one stage's
    images, but an event given another stage explicitly still counts for its round)."""
    groups = [g for g in stats["groups"] if g["annotator"] == annotator]
    own = next((g for g in groups if g["stage"] == stage), None)
    if own is None:
        return None
    out = dict(own)
    for key in ("masks", "accepted", "prompts"):
        out[key] = sum(g[key] for g in groups)
    timed = [g for g in groups if g["seconds_per_mask"] is not None]
    n = sum(g["accepted"] for g in timed)
    out["seconds_per_mask"] = (
        sum(g["seconds_per_mask"] * g["accepted"] for g in timed) / n if n else None
    )
    out["clicks_per_mask"] = out["prompts"] / out["accepted"] if out["accepted"] else None
    return out


def _retrain_entry(result: Any) -> dict[str, Any]:
    return {
        "version": {"id": result.version.id, "name": result.version.name},
        "parent": {"id": result.parent_version.id, "name": result.parent_version.name},
        "dataset_version": result.dataset.name,
        "parent_miou_1pt": result.parent["miou_1pt"],
        "parent_miou_5pt": result.parent["miou_5pt"],
        "new_miou_1pt": result.new["miou_1pt"],
        "new_miou_5pt": result.new["miou_5pt"],
        "holdout_masks": result.new["num_masks"],
        "better": result.better,
        "switched": result.switched,
        "seconds": dict(result.seconds),
        "run_dir": str(result.run_dir),
    }


def run_simulation(
    config: SimulationConfig,
    *,
    round_hooks: Mapping[str, RoundFn] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the loop (module docstring) and write the report (:mod:`.report`) into
    ``config.out``. Returns the report dict: ``{"config", "rounds": [row, ...], ...}``; each
    row has the round's numbers (clicks, seconds and masks per mask / image, final mIoU vs the
    truth), the numbers the event log gives (``event_log``), the model version used and, when
    a retrain followed, ``retrain`` (parent and new held-out 1-point / 5-point mIoU, switched)
    and ``heldout_miou_1pt`` / ``heldout_miou_5pt``: the held-out mIoU of the model used in
    the round.

    A ``prefill`` row also has ``prefill`` (proposals, accepted, rejected, review seconds;
    its ``masks`` / ``masks_per_image`` count the accepted proposals, its clicks and seconds
    per mask are of the masks made by clicks); an ``auto`` row has ``auto`` (recall at IoU
    0.5 and at the target, precision, mIoU of the matched masks); see :mod:`.stages`.

    Raises:
        ValueError: a bad config, a dataset with too few images, an unknown round kind.
    """
    from fastapi.testclient import TestClient

    from ...data.datasets import open_dataset
    from ..retrain import retrain
    from ..server import create_app
    from ..store import Project

    check_config(config)
    hooks: dict[str, RoundFn] = {
        "manual": annotate_round, **STAGE_HOOKS, **dict(round_hooks or {}),
    }  # fmt: skip
    say = progress or (lambda _msg: None)
    dataset = open_dataset(config.data)
    need = config.rounds * config.images_per_round
    if len(dataset) < need:
        raise ValueError(
            f"the dataset has {len(dataset)} images; {config.rounds} rounds of "
            f"{config.images_per_round} fresh images need {need}"
        )
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:need]
    out = Path(config.out)
    if (out / "project").exists() or (out / "report.json").exists():
        raise ValueError(f"{out} holds a simulation already; give a new output folder")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    outcomes_all: list[dict[str, Any]] = []
    start = time.perf_counter()
    with Project.init(out / "project", model=str(config.model)) as project:
        if project.current_model() is None:
            raise ValueError(f"the model {config.model!r} is not a local weights file")
        for r, kind in enumerate(config.kinds(), start=1):
            t = time.perf_counter()
            model = project.current_model()
            name = f"sim-r{r:02d}"
            indices = order[(r - 1) * config.images_per_round : r * config.images_per_round]
            app = create_app(project, prefetch=False)
            admin = {"Authorization": f"Bearer {app.state.token}"}
            with TestClient(app, base_url="http://127.0.0.1") as client:
                token = _check(
                    client.post("/api/annotators", json={"name": name}, headers=admin),
                    "add annotator",
                )["token"]
                images = []
                for i in indices:
                    sample = dataset[int(i)]
                    stem = str(getattr(sample, "name", None) or f"image_{int(i):06d}")
                    record = _check(
                        client.post(
                            "/api/images", headers=admin,
                            files={"file": (f"{stem}.png", _png(sample.image), "image/png")},
                        ),
                        "upload",
                    )  # fmt: skip
                    images.append((int(record["id"]), int(i)))
                client.headers["Authorization"] = f"Bearer {token}"
                ctx = RoundContext(r, kind, client, project, config, images, dataset)
                outcomes = hooks[kind](ctx)
            row = _round_row(
                r, kind, name, outcomes, project.stats(), model, len(images),
                time.perf_counter() - t,
            )  # fmt: skip
            row.update(ctx.row)
            row["image_ids"] = [[image_id, index] for image_id, index in images]
            say(
                f"round {r} ({kind}): {row['masks']} masks, "
                f"{fmt(row['clicks_per_mask'])} clicks/mask, mIoU {fmt(row['miou_final'])}"
            )
            outcomes_all += [{"round": r, **o.to_dict()} for o in outcomes] + ctx.records
            if config.steps > 0 and kind != "auto":
                t = time.perf_counter()
                result = retrain(
                    project, config=config.retrain_config, overrides=config.retrain_overrides,
                    steps=config.steps, device=config.device, holdout=config.holdout,
                    eval_masks_per_image=config.eval_masks_per_image, export_decoder=False,
                )  # fmt: skip
                row["retrain"] = _retrain_entry(result)
                row["heldout_miou_1pt"] = result.parent["miou_1pt"]
                row["heldout_miou_5pt"] = result.parent["miou_5pt"]
                row["retrain_seconds"] = time.perf_counter() - t
                say(
                    f"retrain after round {r}: held-out 1pt/5pt "
                    f"{result.parent['miou_1pt']:.3f}/{result.parent['miou_5pt']:.3f} -> "
                    f"{result.new['miou_1pt']:.3f}/{result.new['miou_5pt']:.3f}, "
                    f"{'switched' if result.switched else 'kept'}"
                )
            rows.append(row)
        final = project.current_model()
    report = {
        "format": "segany-simulation",
        "config": _config_dict(config),
        "rounds": rows,
        "final_model_version": {"id": final.id, "name": final.name} if final else None,
        "seconds": time.perf_counter() - start,
        "project": str(out / "project"),
    }
    write_report(report, out, outcomes_all)
    return report


def _config_dict(config: SimulationConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.__dict__.items():
        if isinstance(value, os.PathLike):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (str, int, float, bool, type(None), dict, list)):
            value = str(value)
        out[key] = value
    out["round_kinds"] = list(config.kinds())
    return out
