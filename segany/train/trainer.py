"""The training loop: optimizer and schedule, mixed precision, DDP, checkpoints, logs, curves.

``train(config)`` runs (or resumes) a run in ``config.out_dir``:

* ``checkpoints/last.pt`` (and ``step_XXXXXXX.pt`` every ``checkpoint_every`` steps): model,
  optimizer, scheduler, step, RNG states and elapsed training time, written to a temporary
  name and renamed. Re-running the same command resumes from ``last.pt``; because every batch
  and prompt is a function of ``(seed, step, rank)``, the resumed run computes the same losses
  as an uninterrupted one.
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
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build import build_sam_model
from ..checkpoint import infer_config, load_into, read_state_dict
from ..config import get_config
from ..modeling import Sam
from ..precision import resolve_device, resolve_precision
from .config import TrainConfig
from .data import StepBatches, open_training_data
from .engine import STAT_KEYS, InteractiveSam
from .validate import BEST_MODEL_NAME, VAL_LOG_NAME, validation_record, validation_sums

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
MODEL_NAME = "model.safetensors"


# --------------------------------------------------------------------------- model


def build_training_model(config: TrainConfig) -> Sam:
    """The model to train: ``config.init`` loaded strictly (fine-tuning; architecture inferred)
    or a fresh ``config.model`` with ViT-style initialisation; frozen parts set, drop-path and
    gradient checkpointing applied. fp32 master weights, train mode."""
    if config.init:
        sd = read_state_dict(config.init)
        sam = build_sam_model(infer_config(sd, name=Path(config.init).stem))
        load_into(sam, sd, source=config.init)
    else:
        sam = build_sam_model(get_config(config.model))
        _init_weights(sam)
    for part, frozen in (
        (sam.image_encoder, config.freeze_image_encoder),
        (sam.prompt_encoder, config.freeze_prompt_encoder),
    ):
        part.requires_grad_(not frozen)
    if config.trainable:
        _train_only(sam, config.trainable)
    sam.image_encoder.set_drop_path(config.drop_path)
    sam.image_encoder.grad_checkpointing = config.grad_checkpointing
    return sam.train()


def _train_only(sam: Sam, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter whose state-dict name is not under one of ``prefixes``."""
    names = [name for name, _ in sam.named_parameters()]

    def under(name: str, prefix: str) -> bool:
        prefix = prefix.rstrip(".")
        return name == prefix or name.startswith(prefix + ".")

    unknown = [p for p in prefixes if not any(under(n, p) for n in names)]
    if unknown:
        tops = sorted({".".join(n.split(".")[:2]) for n in names})
        raise ValueError(
            f"trainable prefixes {unknown} match no parameter of the model; "
            f"parameter names start with one of {tops}"
        )
    for name, p in sam.named_parameters():
        if not any(under(name, prefix) for prefix in prefixes):
            p.requires_grad_(False)
    if not any(p.requires_grad for p in sam.parameters()):
        raise ValueError(
            f"nothing to train: trainable={list(prefixes)} lies entirely inside frozen parts"
        )


#: Gain of the decoder's shared query/key initialisation (see :func:`_init_weights`).
DECODER_QK_GAIN = 2.0


def _init_weights(sam: Sam) -> None:
    """From-scratch init: truncated-normal (std 0.02) linear layers and absolute position
    embedding, as ViT/MAE do; in the mask decoder's attention layers the key projection starts
    equal to the query projection, both scaled by :data:`DECODER_QK_GAIN`. Everything else
    keeps PyTorch's defaults.

    Why the decoder init: queries and keys carry the random-Fourier positional encodings of
    prompts and image tokens. With equal projections, ``q·k = peᵀ WᵀW pe'`` is a positive
    kernel from step 0, so a prompt already attends to the image tokens near it; with
    independent random projections a from-scratch model spent ~600 steps predicting nothing
    before it found that alignment. Only values change, never names or shapes."""
    gen = torch.Generator().manual_seed(0)
    for m in sam.image_encoder.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(
                    torch.nn.init.trunc_normal_(torch.empty_like(m.weight), std=0.02, generator=gen)
                )
                if m.bias is not None:
                    m.bias.zero_()
    if sam.image_encoder.pos_embed is not None:
        with torch.no_grad():
            pe = sam.image_encoder.pos_embed
            pe.copy_(torch.nn.init.trunc_normal_(torch.empty_like(pe), std=0.02, generator=gen))
    with torch.no_grad():
        for m in sam.mask_decoder.transformer.modules():
            q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                q.weight.mul_(DECODER_QK_GAIN)
                k.weight.copy_(q.weight)
                k.bias.copy_(q.bias)


def param_groups(sam: Sam, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases, norms, embeddings and position
    tables; layer-wise lr decay for the ViT (block ``i`` of ``d``: ``layer_decay ** (d - i)``,
    patch/position embeddings ``layer_decay ** (d + 1)``, neck and the rest 1)."""
    depth = len(sam.image_encoder.blocks)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in sam.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("image_encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")):
            layer = 0
        else:
            layer = depth + 1
        scale = config.layer_decay ** (depth + 1 - layer)
        no_decay = (
            p.ndim <= 1
            or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
            or ".norm" in name
            or "embed" in name.split(".")[-2]
            or "token" in name
        )
        wd = 0.0 if no_decay else config.weight_decay
        groups.setdefault((scale, wd), []).append(p)
    return [
        {"params": ps, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in sorted(groups.items())
    ]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then × ``lr_decay_factor`` at each
    ``lr_decay_steps`` boundary (SAM's step schedule)."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return config.lr_decay_factor ** sum(step >= s for s in config.lr_decay_steps)


# --------------------------------------------------------------------------- run state


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.precision`` on ``device``; None = plain fp32."""
    dtype = resolve_precision(config.precision, device)
    return None if dtype == torch.float32 else dtype


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    """Global RNG states (tensors only, so checkpoints load with ``weights_only``). Batches
    and prompts do not depend on them: they come from generators seeded by the step."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only`` unpickling: tensors and plain data)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RuntimeError(f"cannot read training checkpoint {path}: {e}") from e


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

    path = Path(path)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        sd, str(tmp), metadata={"format": "pt", "producer": "segany.train", **(metadata or {})}
    )
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- loop


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def train(
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    max_time_s: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) training. Returns the last logged record.

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
    world, rank, local = _dist_env()
    distributed = world > 1
    owns_group = False  # a process group the caller set up is left for the caller to end
    if distributed:
        import torch.distributed as dist

        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns_group = True
    else:
        dev = resolve_device(device)
    out = Path(config.out_dir)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    sam = build_training_model(config).to(dev)
    module = InteractiveSam(sam, config).to(dev)
    opt = torch.optim.AdamW(
        param_groups(sam, config),
        lr=config.lr,
        betas=tuple(config.betas),
        weight_decay=0.0,
        # One fused kernel for all parameters instead of a loop of small ops per tensor: on a
        # 2-core CPU the loop took ~15 % of a first-prompt step. Same algorithm.
        fused=dev.type in ("cpu", "cuda"),
    )
    start = 0
    elapsed = 0.0  # training wall time of earlier segments of a resumed run
    last_path = ckpt_dir / "last.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        sam.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        elapsed = float(state.get("elapsed_s", 0.0))
        torch.set_rng_state(state["rng"]["torch"])
    if distributed:
        model: nn.Module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True,
        )
    else:
        model = module

    data = open_training_data(config.data)
    stream = StepBatches(
        data,
        config,
        img_size=sam.image_encoder.img_size,
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
        start_step=start,
        rank=rank,
        world_size=world,
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=False,
    )
    amp = _autocast_dtype(config, dev)
    end = config.steps if max_steps is None else min(config.steps, start + max_steps)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    window: list[dict[str, float]] = []
    t_start = time.time() - elapsed
    deadline = None if max_time_s is None else time.time() + max_time_s
    log_file = out / LOG_NAME
    val_file = out / VAL_LOG_NAME
    val_data, best = None, None  # best: the best validation score so far (kept across resume)
    if config.val_data:
        val_data = open_training_data(config.val_data)
        best = max((r["score"] for r in read_log(val_file) if r["step"] <= start), default=None)
    done = start
    for step, batch in loader:
        if step >= end:
            break
        factor = lr_factor(step, config)
        for g in opt.param_groups:
            g["lr"] = config.lr * factor * g["lr_scale"]
        torch.manual_seed(config.seed * 1_000_003 + step * 1009 + rank)  # drop-path masks
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            rounds = 1 if step < config.first_prompt_steps else config.rounds
            outputs = model(batch, seed=config.seed * 7919 + step * 101 + rank, rounds=rounds)
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {float(loss)} at step {step}; lower lr or use fp32 precision"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if config.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip))
        opt.step()
        stats = {k: float(outputs[k].detach()) for k in STAT_KEYS}
        late = deadline is not None and time.time() > deadline
        if distributed:  # the out-of-time flag rides along, so every rank stops at the same step
            values = [stats[k] for k in STAT_KEYS] + [float(late)]
            vec = torch.tensor(values, dtype=torch.float64, device=dev)
            torch.distributed.all_reduce(vec)
            *totals, late_ranks = vec.tolist()
            stats = {k: float(x) / world for k, x in zip(STAT_KEYS, totals, strict=True)}
            late = late_ranks > 0
        window.append(stats)
        done = step + 1
        if late and done < end:
            end = done  # out of time: log, checkpoint and stop after this step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats.get('iou_first', 0):.2f}")
        if rank == 0 and (done % config.log_every == 0 or done == end):
            record = {
                "step": done,
                "lr": config.lr * factor,
                "rounds": rounds,
                "time_s": round(time.time() - t_start, 2),
                **{k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[-1]},
            }
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            with open(log_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            window = []
        if val_data is not None and (
            done == config.steps or (config.val_every and done % config.val_every == 0)
        ):
            t_val = time.time()
            sums = validation_sums(sam, val_data, config, rank, world).to(dev)
            if distributed:
                torch.distributed.all_reduce(sums)
            if rank == 0:
                val = {"step": done, "time_s": round(time.time() - t_start, 2)}
                val.update(validation_record(sums.cpu(), config))
                val["val_s"] = round(time.time() - t_val, 2)
                if best is None or val["score"] > best:
                    best, val["best"] = val["score"], True
                    save_state_dict(sam.state_dict(), out / BEST_MODEL_NAME)
                with open(val_file, "a") as f:
                    f.write(json.dumps(val) + "\n")
                if bar is not None:
                    bar.write(f"step {done}: validation " + ", ".join(
                        f"{k} pt {t:.3f}" for k, t in zip(val["clicks"], val["top"], strict=True)
                    ) + f" (top mIoU, {val['masks']} masks)")  # fmt: skip
        if done % config.checkpoint_every == 0 or done == end:
            if rank == 0:
                state = {
                    "model": sam.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": done,
                    "elapsed_s": time.time() - t_start,
                    "config": config.to_dict(),
                    "rng": _rng_state(),
                }
                _atomic_save(state, last_path)
                if done % config.checkpoint_every == 0:
                    _atomic_save(state, ckpt_dir / f"step_{done:07d}.pt")
                plot_curves(log_file, out / CURVES_NAME, val_file)
            if distributed:
                torch.distributed.barrier()
    if bar is not None:
        bar.close()
    if rank == 0 and done >= config.steps:
        save_state_dict(sam.state_dict(), out / MODEL_NAME)
    if distributed:
        torch.distributed.barrier()
        if owns_group:
            torch.distributed.destroy_process_group()
    return record


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
    png = Path(png_path)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)


def steps_per_epoch(num_images: int, config: TrainConfig, world_size: int = 1) -> int:
    """Steps needed to see every image once."""
    return math.ceil(num_images / (config.images_per_step * world_size))
