"""The training loop: schedule, mixed precision, DDP, validation, checkpoints, logs, curves.

``train(config)`` runs (or resumes) a run in ``config.out_dir``:

* ``checkpoints/last.pt`` (and ``step_XXXXXXX.pt`` every ``checkpoint_every`` steps): model,
  optimizer, step, config, RNG states and elapsed training time, written atomically.
  Re-running the same command resumes from ``last.pt``; because every batch and prompt is a
  function of ``(seed, step, rank)`` (:mod:`segany.train.seeds`), the resumed run computes the
  same losses as an uninterrupted one.
* ``log.jsonl`` (one line per logged step; ``time_s`` is the run's training wall time, summed
  over the segments of a resumed run), ``curves.png`` (loss and IoU curves),
  ``config.json``, and at the end ``model.safetensors`` (the SAM state dict with official
  names, loadable by :func:`segany.load_model`).
* with ``val_data``: ``val.jsonl`` (validation mIoU per click count every ``val_every`` steps
  and at the end, :mod:`segany.train.validate`) and ``model_best.safetensors`` (the weights of
  the best validation ``score``).

Under ``torchrun`` (``WORLD_SIZE > 1``) it initialises ``torch.distributed`` (NCCL on CUDA,
gloo on CPU) and wraps the model in DistributedDataParallel; each process takes its own slice
of every step's images.

:func:`train` is the outline of the loop; each part is a function of the run's state
(:class:`_Run`): :func:`_set_up` (model, optimizer, resume, data), then per step
:func:`_train_step`, :func:`_advance`, :func:`_log`, :func:`_validate` and
:func:`_save_checkpoint`, and at the end :func:`_finish`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build import text_encoder_path
from ..io.files import atomic_write, write_json_atomic
from ..modeling import Sam
from ..precision import resolve_device, resolve_precision
from .config import TrainConfig
from .data import StepBatches, open_training_data
from .engine import STAT_KEYS, InteractiveSam
from .model import build_optimizer, build_training_model, lr_factor
from .outputs import (
    append_jsonl,
    load_checkpoint,
    plot_curves,
    read_log,
    rng_state,
    save_checkpoint,
    save_state_dict,
)
from .seeds import Stream, step_seed
from .text import TextPrompts, load_training_text_encoder
from .validate import BEST_MODEL_NAME, VAL_LOG_NAME, validation_record, validation_sums

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
MODEL_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class RunFiles:
    """Where a run in ``out`` keeps its files (see the module docstring)."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / CONFIG_NAME

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    @property
    def log(self) -> Path:
        return self.out / LOG_NAME

    @property
    def val_log(self) -> Path:
        return self.out / VAL_LOG_NAME

    @property
    def curves(self) -> Path:
        return self.out / CURVES_NAME

    @property
    def model(self) -> Path:
        return self.out / MODEL_NAME

    @property
    def best_model(self) -> Path:
        return self.out / BEST_MODEL_NAME


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Process:
    """This process's place in the run: its device and its rank among ``world`` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # a process group the caller set up is left for the caller to end

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the processes (in place); a no-op on one process."""
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def _start_process(device: str | torch.device | None) -> _Process:
    """Pick the device and, under ``torchrun`` (``WORLD_SIZE > 1``), join the process group
    (NCCL on CUDA, gloo on CPU) unless the caller already set one up."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return _Process(resolve_device(device), rank, world)
    import torch.distributed as dist

    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return _Process(dev, rank, world, owns_group)


def _end_process(proc: _Process) -> None:
    """Wait for every process; leave the process group if this run set it up."""
    if proc.distributed:
        proc.barrier()
        if proc.owns_group:
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _StepResult:
    """What one optimizer step reports: the step's statistics (:data:`STAT_KEYS`, averaged over
    the processes), the schedule's base learning rate, its number of prompt rounds, the
    gradient norm before clipping (None without clipping) and whether a process ran out of
    time."""

    stats: dict[str, float]
    lr: float
    rounds: int
    grad_norm: float | None
    late: bool


@dataclass
class _Run:
    """One invocation of :func:`train` (one segment of a possibly resumed run): the model
    being trained and where the loop stands.

    ``done`` counts the steps completed so far (from the resumed step on), ``end`` is the
    step this invocation stops after (brought forward when out of time); ``t_start`` is the
    ``time.time()`` at which the run's training time was 0 (earlier segments included).
    """

    config: TrainConfig
    proc: _Process
    files: RunFiles
    sam: Sam  # fp32 master weights
    model: nn.Module  # what a step calls: InteractiveSam, under DDP with several processes
    opt: torch.optim.Optimizer
    loader: Any  # this process's (step, batch) from the resumed step on
    amp: torch.dtype | None  # autocast dtype; None = plain fp32
    bar: Any  # the progress bar (rank 0), or None
    done: int
    end: int
    t_start: float
    deadline: float | None
    val_data: Any = None
    best: float | None = None  # the best validation score so far (kept across resume)
    window: list[dict[str, float]] = field(default_factory=list)  # stats since the last record
    record: dict[str, Any] = field(default_factory=dict)  # the last logged record


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.precision`` on ``device``; None = plain fp32."""
    dtype = resolve_precision(config.precision, device)
    return None if dtype == torch.float32 else dtype


def _resume(files: RunFiles, sam: Sam, opt: torch.optim.Optimizer) -> tuple[int, float]:
    """Load ``last.pt`` into the model, the optimizer and the global torch RNG if it exists.
    Returns the step to continue from and the training time of the earlier segments (s)."""
    if not files.last_checkpoint.exists():
        return 0, 0.0
    state = load_checkpoint(files.last_checkpoint)
    sam.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


def _batches(
    config: TrainConfig, sam: Sam, start: int, proc: _Process, text: TextPrompts | None
) -> Any:
    """The loader of this process's ``(step, batch)`` from ``start`` on (with per-mask text
    embeddings from ``text``, if given)."""
    stream = StepBatches(
        open_training_data(config.data),
        config,
        img_size=sam.image_encoder.img_size,
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
        start_step=start,
        rank=proc.rank,
        world_size=proc.world,
        text=text,
    )
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=config.num_workers, persistent_workers=False
    )


def _distribute(module: nn.Module, proc: _Process) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under ``torchrun``, else itself."""
    if not proc.distributed:
        return module
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[proc.device.index] if proc.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _progress_bar(config: TrainConfig, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _set_up(
    config: TrainConfig,
    proc: _Process,
    *,
    resume: bool,
    progress: bool,
    max_steps: int | None,
    max_time_s: float | None,
) -> _Run:
    """Write ``config.json``, build the model and optimizer, resume from ``last.pt`` (if
    ``resume``), wrap the model for DDP, open the data and start the clock."""
    files = RunFiles(Path(config.out_dir))
    if proc.rank == 0:
        files.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json_atomic(files.config, config.to_dict(), indent=2, newline=True)
    text = None
    if config.text_prompts:
        text = TextPrompts(load_training_text_encoder(config), config.text_source)
    sam = build_training_model(config, text.embed_dim if text else None).to(proc.device)
    module = InteractiveSam(sam, config).to(proc.device)
    opt = build_optimizer(sam, config, proc.device)
    start, elapsed = _resume(files, sam, opt) if resume else (0, 0.0)
    model = _distribute(module, proc)
    loader = _batches(config, sam, start, proc, text)
    amp = _autocast_dtype(config, proc.device)
    end = config.steps if max_steps is None else min(config.steps, start + max_steps)
    bar = _progress_bar(config, start) if progress and proc.rank == 0 else None
    run = _Run(
        config=config,
        proc=proc,
        files=files,
        sam=sam,
        model=model,
        opt=opt,
        loader=loader,
        amp=amp,
        bar=bar,
        done=start,
        end=end,
        t_start=time.time() - elapsed,
        deadline=None if max_time_s is None else time.time() + max_time_s,
    )
    if config.val_data:
        run.val_data = open_training_data(config.val_data)
        scores = (r["score"] for r in read_log(files.val_log) if r["step"] <= start)
        run.best = max(scores, default=None)
    return run


def _train_step(run: _Run, step: int, batch: dict[str, torch.Tensor]) -> _StepResult:
    """One optimizer step: the scheduled learning rate, the loss of the step's batch under
    autocast with the step's seeds, backward, clipping and AdamW; the statistics and the
    out-of-time flag are all-reduced, so every process stops at the same step."""
    cfg, proc = run.config, run.proc
    factor = lr_factor(step, cfg)
    for g in run.opt.param_groups:
        g["lr"] = cfg.lr * factor * g["lr_scale"]
    torch.manual_seed(step_seed(Stream.DROP_PATH, cfg.seed, step, proc.rank))
    rounds = 1 if step < cfg.first_prompt_steps else cfg.rounds
    amp = run.amp
    with torch.autocast(proc.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        seed = step_seed(Stream.PROMPTS, cfg.seed, step, proc.rank)
        outputs = run.model(batch, seed=seed, rounds=rounds)
    loss = outputs["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss {float(loss)} at step {step}; lower lr or use fp32 precision"
        )
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = None
    if cfg.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.sam.parameters(), cfg.grad_clip))
    run.opt.step()
    stats = {k: float(outputs[k].detach()) for k in STAT_KEYS}
    late = run.deadline is not None and time.time() > run.deadline
    stats, late = _mean_over_processes(proc, stats, late)
    return _StepResult(stats, cfg.lr * factor, rounds, grad_norm, late)


def _mean_over_processes(
    proc: _Process, stats: dict[str, float], late: bool
) -> tuple[dict[str, float], bool]:
    """The statistics averaged over the processes, and whether any of them is out of time
    (the flag rides along in the same all-reduce). Unchanged on one process."""
    if not proc.distributed:
        return stats, late
    values = [stats[k] for k in STAT_KEYS] + [float(late)]
    vec = proc.all_reduce(torch.tensor(values, dtype=torch.float64, device=proc.device))
    *totals, late_ranks = vec.tolist()
    stats = {k: float(x) / proc.world for k, x in zip(STAT_KEYS, totals, strict=True)}
    return stats, late_ranks > 0


def _advance(run: _Run, step: int, result: _StepResult) -> None:
    """Count ``step`` as done; when a process is out of time, make it the last one."""
    run.window.append(result.stats)
    run.done = step + 1
    if result.late and run.done < run.end:
        run.end = run.done  # out of time: log, checkpoint and stop after this step
    if run.bar is not None:
        stats = result.stats
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats.get('iou_first', 0):.2f}")


def _log(run: _Run, result: _StepResult) -> None:
    """Append the mean statistics since the last record to ``log.jsonl`` (rank 0)."""
    window = run.window
    record = {
        "step": run.done,
        "lr": result.lr,
        "rounds": result.rounds,
        "time_s": round(time.time() - run.t_start, 2),
        **{k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[-1]},
    }
    if result.grad_norm is not None:
        record["grad_norm"] = result.grad_norm
    append_jsonl(run.files.log, record)
    run.record, run.window = record, []


def _validate(run: _Run) -> None:
    """Validate on every process's share of ``val_data``; rank 0 appends the all-reduced
    record to ``val.jsonl`` and saves the weights when the score is the best so far."""
    t_val = time.time()
    sums = validation_sums(run.sam, run.val_data, run.config, run.proc.rank, run.proc.world)
    sums = run.proc.all_reduce(sums.to(run.proc.device))
    if run.proc.rank != 0:
        return
    val = {"step": run.done, "time_s": round(time.time() - run.t_start, 2)}
    val.update(validation_record(sums.cpu(), run.config))
    val["val_s"] = round(time.time() - t_val, 2)
    if run.best is None or val["score"] > run.best:
        run.best, val["best"] = val["score"], True
        save_state_dict(run.sam.state_dict(), run.files.best_model)
    append_jsonl(run.files.val_log, val)
    if run.bar is not None:
        run.bar.write(f"step {run.done}: validation " + ", ".join(
            f"{k} pt {t:.3f}" for k, t in zip(val["clicks"], val["top"], strict=True)
        ) + f" (top mIoU, {val['masks']} masks)")  # fmt: skip


def _save_checkpoint(run: _Run) -> None:
    """Rank 0 writes ``last.pt`` (and ``step_XXXXXXX.pt`` every ``checkpoint_every`` steps)
    and redraws the curves; then every process waits for it."""
    if run.proc.rank == 0:
        state = {
            "model": run.sam.state_dict(),
            "optimizer": run.opt.state_dict(),
            "step": run.done,
            "elapsed_s": time.time() - run.t_start,
            "config": run.config.to_dict(),
            "rng": rng_state(),
        }
        save_checkpoint(state, run.files.last_checkpoint)
        if run.done % run.config.checkpoint_every == 0:
            save_checkpoint(state, run.files.step_checkpoint(run.done))
        plot_curves(run.files.log, run.files.curves, run.files.val_log)
    run.proc.barrier()


def _finish(run: _Run) -> None:
    """Close the progress bar; when the schedule is complete, rank 0 writes the final
    ``model.safetensors``; leave the process group."""
    if run.bar is not None:
        run.bar.close()
    if run.proc.rank == 0 and run.done >= run.config.steps:
        save_state_dict(run.sam.state_dict(), run.files.model)
        _ship_text_encoder(run.config, run.files.model)
    _end_process(run.proc)


def _ship_text_encoder(config: TrainConfig, model_path: Path) -> None:
    """Copy a small-CLIP ``text_encoder`` beside the trained model
    (:func:`segany.build.text_encoder_path`), so :func:`segany.load_model` of it answers
    ``text=`` by itself. An open_clip encoder is not copied (give it with ``--text-encoder``)."""
    from ..text.load import OPEN_CLIP_PREFIX

    if not config.text_prompts or config.text_encoder.startswith(OPEN_CLIP_PREFIX):
        return
    with atomic_write(text_encoder_path(model_path)) as tmp:
        shutil.copyfile(config.text_encoder, tmp)


def train(
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    max_time_s: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) training. Returns the last logged record (empty on ranks other than 0).

    Args:
        config: the run's :class:`TrainConfig`.
        device: ``cpu``/``cuda``/...; default CUDA if available (the local rank's GPU under
            ``torchrun``), else CPU.
        resume: continue from ``out_dir/checkpoints/last.pt`` if present (else start over).
        progress: show a progress bar with ETA (rank 0).
        max_steps: stop after this many steps of *this invocation* (for tests and time-sliced
            runs); the schedule still follows ``config.steps``.
        max_time_s: stop cleanly (checkpoint written) at the first step that ends more than
            this many seconds after this invocation started (time-sliced runs on a leased
            machine); re-running resumes. The schedule still follows ``config.steps``.
    """
    proc = _start_process(device)
    run = _set_up(
        config, proc, resume=resume, progress=progress, max_steps=max_steps, max_time_s=max_time_s
    )
    for step, batch in run.loader:
        if step >= run.end:
            break
        result = _train_step(run, step, batch)
        _advance(run, step, result)
        if proc.rank == 0 and (run.done % config.log_every == 0 or run.done == run.end):
            _log(run, result)
        if run.val_data is not None and (
            run.done == config.steps or (config.val_every and run.done % config.val_every == 0)
        ):
            _validate(run)
        if run.done % config.checkpoint_every == 0 or run.done == run.end:
            _save_checkpoint(run)
    _finish(run)
    return run.record
