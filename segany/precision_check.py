"""A lower precision against fp32 for one model: accuracy and image-encoder speed, stored per
model, and the verdict ``precision="auto"`` takes from it for int8.

A **report** (JSON) belongs to one model, identified by :func:`model_key` (the fingerprints of
its image encoder and of its prompt encoder + mask decoder), and holds

* ``accuracy``: per precision scheme (``"int8/x86/w7"``: int8 on the x86 engine with 7-bit
  weights; ``"bf16"``), the comparison with fp32 on a dataset
  (:func:`segany.precision_bench.measure_accuracy`) and whether it ``passes`` :data:`BOUNDS`;
* ``speed``: per CPU class (:func:`segany.quantize.cpu_class`), the image encoder's time in fp32
  and in each other precision on that class (:func:`segany.precision_bench.measure_speed`).

The bundled model ships its report (``segany/models/segany_tiny.precision.json``, measured on the
project's machine); ``segany bench-precision --model M`` measures any model on the user's data
and machine and writes ``$SEGANY_HOME/precision/<key>.json`` (entries are merged, so reports
from several CPU classes accumulate; a user's own measurement replaces the shipped one).

:func:`int8_verdict` is the rule: int8 only when the report for this model says that int8 with
this CPU's scheme passes the accuracy bound **and** that the encoder was measured at least
:data:`MIN_SPEEDUP` times faster than fp32 on this CPU class. Anything unmeasured means fp32.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from . import hub
from .io.embedding import decoder_fingerprint, model_fingerprint
from .io.files import write_json_atomic
from .precision import check_precision, resolve_precision
from .quantize import cpu_class, cpu_model_name, int8_scheme, weight_bits

#: The accuracy bound a lower precision must stay within to be chosen by ``auto``: mean mask IoU
#: against fp32 (same prompts) at least ``mask_iou_min``; 1-point and 5-point mIoU against the
#: ground truth at most ``miou_drop_max`` below fp32's.
BOUNDS = {"mask_iou_min": 0.98, "miou_drop_max": 0.005}
#: int8 must make the image encoder at least this many times faster than fp32 to be chosen.
MIN_SPEEDUP = 1.05
REPORT_FORMAT = 1
#: The default held-out data of ``segany bench-precision`` (generated scenes with seed 1: the
#: bundled model's evaluation set, never seen in training).
DEFAULT_DATA = "procedural:50:1"
SHIPPED_DIR = Path(__file__).resolve().parent / "models"


def model_key(model: torch.nn.Module) -> str:
    """The report key of a :class:`segany.modeling.Sam`: 32 hex digits from its weights."""
    return model_fingerprint(model) + decoder_fingerprint(model)


def scheme_name(precision: str, cls: str | None = None) -> str:
    """The accuracy entry a precision uses on a CPU class: ``"int8/<engine>/w<bits>"`` for int8
    (see :func:`segany.quantize.int8_scheme`), the precision name otherwise."""
    if precision != "int8":
        return precision
    engine, qmax = int8_scheme(cls)
    return f"int8/{engine}/w{weight_bits(qmax)}"


def report_path(key: str) -> Path:
    """Where ``segany bench-precision`` writes the report of the model with ``key``."""
    return hub.cache_dir() / "precision" / f"{key}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        return None
    return data


def merge_reports(base: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``new`` (same model): accuracy entries per scheme and speed entries
    per CPU class from ``new`` replace ``base``'s, the others are kept."""
    if base is None or base.get("model_key") != new.get("model_key"):
        return copy.deepcopy(new)
    out = copy.deepcopy(base)
    for part in ("accuracy", "speed"):
        out.setdefault(part, {}).update(copy.deepcopy(new.get(part, {})))
    for k, v in new.items():
        if k not in ("accuracy", "speed"):
            out[k] = v
    return out


def find_report(model: torch.nn.Module) -> tuple[dict[str, Any] | None, str]:
    """The report of ``model`` and where it came from: the shipped one (bundled model) merged
    with the user's cache, the cache's entries winning; ``(None, "")`` when there is none."""
    key = model_key(model)
    shipped = None
    for path in sorted(SHIPPED_DIR.glob("*.precision.json")):
        data = _read(path)
        if data is not None and data.get("model_key") == key:
            shipped = data
            break
    cached = _read(report_path(key))
    if cached is not None and cached.get("model_key") != key:
        cached = None
    if shipped is None and cached is None:
        return None, ""
    if cached is None:
        return shipped, "the report shipped with segany"
    if shipped is None:
        return cached, str(report_path(key))
    return merge_reports(shipped, cached), f"the shipped report and {report_path(key)}"


def passes(entry: dict[str, Any]) -> bool:
    """Whether an accuracy entry is within :data:`BOUNDS`."""
    return bool(
        entry["mask_iou_mean"] >= BOUNDS["mask_iou_min"]
        and entry["miou_drop_1pt"] <= BOUNDS["miou_drop_max"]
        and entry["miou_drop_5pt"] <= BOUNDS["miou_drop_max"]
    )


def int8_verdict(model: torch.nn.Module, cls: str | None = None) -> tuple[bool, str]:
    """Whether ``precision="auto"`` may run ``model`` in int8 on a CPU class (default: this
    CPU's), and why (one sentence). See the module docstring for the rule."""
    cls = cpu_class() if cls is None else cls
    scheme = scheme_name("int8", cls)
    report, source = find_report(model)
    hint = "'segany bench-precision --model M' measures it on this machine"
    if report is None:
        return False, f"int8 is not measured for this model ({hint})"
    entry = report.get("accuracy", {}).get(scheme)
    if entry is None:
        return False, f"int8 as {cls} CPUs run it ({scheme}) is not measured ({hint})"
    if not passes(entry):
        return False, (
            f"int8 ({scheme}) failed the accuracy bound in {source}: mask IoU vs fp32 "
            f"{entry['mask_iou_mean']:.4f} (bound >= {BOUNDS['mask_iou_min']}), mIoU drop "
            f"{entry['miou_drop_1pt']:+.4f} at 1 point, {entry['miou_drop_5pt']:+.4f} at 5 points "
            f"(bound <= {BOUNDS['miou_drop_max']})"
        )
    speed = report.get("speed", {}).get(cls, {}).get("int8")
    if speed is None:
        return False, f"int8 speed is not measured on {cls} CPUs ({hint})"
    if speed["speedup"] < MIN_SPEEDUP:
        return False, (
            f"int8 measured {speed['speedup']:.2f}x fp32's encoder speed on {cls} CPUs "
            f"(needs >= {MIN_SPEEDUP}x)"
        )
    return True, (
        f"int8 measured {speed['speedup']:.2f}x faster than fp32 on {cls} CPUs and within the "
        f"accuracy bound (mask IoU vs fp32 {entry['mask_iou_mean']:.4f} >= "
        f"{BOUNDS['mask_iou_min']}, mIoU drop {max(entry['miou_drop_1pt'], entry['miou_drop_5pt']):+.4f}"
        f" <= {BOUNDS['miou_drop_max']}; {source})"
    )


def choose_precision(precision: str, model: torch.nn.Module) -> tuple[str, str]:
    """The precision ``model`` runs in when asked for ``precision`` on its device, and why:
    a concrete name is itself; ``"auto"`` is bf16 where the device runs it natively, else on a
    CPU int8 when :func:`int8_verdict` allows it, else fp32."""
    check_precision(precision)
    if precision != "auto":
        return precision, "asked for"
    device = model.device
    if resolve_precision("auto", device) == torch.bfloat16:
        where = "this GPU" if device.type == "cuda" else "this CPU (AVX512-BF16 or AMX)"
        return "bf16", f"{where} runs bf16 natively"
    if device.type != "cpu":
        return "fp32", f"{device} has no native bf16"
    ok, why = int8_verdict(model)
    return ("int8" if ok else "fp32"), why


def machine_line() -> str:
    """CPU model, cores and torch version (where a measurement ran)."""
    return f"{cpu_model_name()}, {os.cpu_count()} cores, torch {torch.__version__}"


def build_report(
    model: torch.nn.Module,
    name: str,
    accuracy: dict[str, dict[str, Any]],
    speed: dict[str, Any] | None,
    data: str,
) -> dict[str, Any]:
    """A report (module docstring) for this CPU class from the results of
    :func:`segany.precision_bench.measure_accuracy` (per precision) and
    :func:`segany.precision_bench.measure_speed`."""
    cls = cpu_class()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    where = {"cpu_class": cls, "machine": machine_line(), "measured": stamp}
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model_key": model_key(model),
        "model": name,
        "bounds": dict(BOUNDS),
        "accuracy": {
            scheme_name(p, cls): {**entry, "data": data, **where} for p, entry in accuracy.items()
        },
        "speed": {},
    }
    if speed is not None:
        report["speed"][cls] = {**speed, **where}
    return report


def save_report(report: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Merge ``report`` into the one at ``path`` (default :func:`report_path`) atomically."""
    target = Path(path) if path is not None else report_path(report["model_key"])
    target.parent.mkdir(parents=True, exist_ok=True)
    merged = merge_reports(_read(target), report)
    write_json_atomic(target, merged, indent=1, newline=True)
    return target
