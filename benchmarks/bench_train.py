"""Training throughput: seconds per step of each phase of a training config, through the real
``segany.train.train`` loop (data loading, forward, backward, optimizer, logging).

Phases (each a short run of its own, from scratch, with the config's batch and precision):
* ``first_prompt_small``: first-prompt steps (1 round) at ``small_input_size`` (progressive
  resizing), only if the config uses it;
* ``first_prompt``: first-prompt steps at the model's input size;
* ``interactive``: steps of ``rounds`` (11) rounds of simulated interactive prompting.

The time per step is measured between logged steps ``--warmup`` and ``--steps`` (warm-up and
loader start-up excluded); the last column prices the config's whole schedule with it.

Run on one process: ``python benchmarks/bench_train.py configs/segany_tiny_gpu.toml``; as the
CPU recipe trains (2 processes of 1 thread each):
``OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/bench_train.py``.
Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from common import RESULTS, machine, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="configs/segany_tiny.toml")
    p.add_argument("--steps", type=int, default=30, help="steps per phase (default 30)")
    p.add_argument("--warmup", type=int, default=10, help="steps not timed (default 10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    if not 0 < args.warmup < args.steps:
        sys.exit(f"--warmup must be in (0, --steps={args.steps}), got {args.warmup}")

    from segany.train import load_train_config, train
    from segany.train.outputs import read_log

    cfg = load_train_config(args.config, args.set)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = args.steps
    phases = {
        "first_prompt_small": {"first_prompt_steps": n, "small_input_steps": n},
        "first_prompt": {"first_prompt_steps": n, "small_input_steps": 0},
        "interactive": {"first_prompt_steps": 0, "small_input_steps": 0},
    }
    if cfg.small_input_steps == 0:
        del phases["first_prompt_small"]
    # Steps of each phase in the config's own schedule.
    small = min(cfg.small_input_steps, cfg.first_prompt_steps, cfg.steps)
    counts = {
        "first_prompt_small": small,
        "first_prompt": min(cfg.first_prompt_steps, cfg.steps) - small,
        "interactive": max(cfg.steps - cfg.first_prompt_steps, 0),
    }
    if world > 1:  # one process group for all phases (train() leaves a caller's group open)
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in phases.items():
            out_dir = os.path.join(tmp, name)
            run = cfg.replace(
                steps=n, log_every=1, checkpoint_every=10**9, out_dir=out_dir, warmup_steps=1,
                lr_decay_steps=(), **change,
            )  # fmt: skip
            train(run, resume=False, progress=False)
            if rank == 0:
                log = {r["step"]: r["time_s"] for r in read_log(Path(out_dir) / "log.jsonl")}
                per_step = (log[n] - log[args.warmup]) / (n - args.warmup)
                rows.append(
                    {
                        "phase": name,
                        "s_per_step": round(per_step, 4),
                        "schedule_steps": counts[name],
                        "schedule_min": round(per_step * counts[name] / 60, 1),
                    }
                )
    if world > 1:
        dist.destroy_process_group()
    if rank != 0:
        return
    info = machine()
    print(f"# {args.config}: {world} process(es), {info['torch_threads']} thread(s) each")
    print(f"# {info['cpu']} ({info['cores']} cores), gpu {info.get('gpu')}, torch {info['torch']}")
    print("| phase | s/step | steps in schedule | minutes |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['phase']} | {r['s_per_step']:.3f} | {r['schedule_steps']} | "
              f"{r['schedule_min']:.1f} |")  # fmt: skip
    total = sum(r["schedule_min"] for r in rows)
    print(f"| whole schedule | | {cfg.steps} | {total:.1f} |")
    result = {"config": args.config, "overrides": args.set, "processes": world, "machine": info}
    stem = f"train_{Path(args.config).stem}_{world}p"
    write_results(args.out, stem, {**result, "phases": rows})


if __name__ == "__main__":
    main()
