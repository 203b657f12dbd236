"""What the benchmark scripts share: the machine description, the process's memory, running one
configuration in a worker process of its own, and writing the results to
``benchmarks/results/``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rss_kb(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` in kB (``"VmRSS"``, the
    resident set, or ``"VmHWM"``, its high-water mark); 0 where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def machine() -> dict[str, Any]:
    """CPU model, core count, torch threads and version, Python version (and the GPU)."""
    import torch

    from segany.precision import cpu_has_native_bf16
    from segany.quantize import cpu_model_name

    cpu = cpu_model_name()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def add_worker_arguments(parser: argparse.ArgumentParser, **defaults: str | None) -> None:
    """Add ``--worker`` (run one configuration and :func:`send_result` it) and the hidden
    options that pass the configuration: one ``--name`` per keyword (``_`` becomes ``-``)."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), default=default, help=argparse.SUPPRESS)


def send_result(result: dict[str, Any]) -> None:
    """Hand a worker's result to :func:`run_worker` (one ``RESULT`` line on stdout)."""
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(
    script: str, options: list[str], label: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script --worker *options`` in a new Python process (with ``env`` added to this
    process's environment) and return the result it :func:`send_result`-ed; its output is shown
    and the benchmark stops if it fails."""
    print(f"running {label} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, script, "--worker", *options]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        raise SystemExit(f"worker {label} failed")
    return json.loads(lines[-1].removeprefix("RESULT "))


def write_results(out_dir: str | os.PathLike, stem: str, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``out_dir/<stem>_<date>-<time>.json`` and say where."""
    from segany.io.files import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, results, indent=2, newline=True)
    print(f"\nwrote {path}", file=sys.stderr)
    return path
