"""Precision selection: ``"fp32" | "bf16" | "fp16" | "int8" | "auto"``.

``"auto"`` picks bfloat16 where the hardware runs it natively — CUDA devices that support bf16,
x86 CPUs with AVX512-BF16 or AMX; on other CPUs int8 (:mod:`segany.quantize`) where it is
measured faster and accurate enough for the model in use (:mod:`segany.precision_check`,
decided per model by :func:`segany.precision_check.choose_precision`); float32 elsewhere.

``"int8"`` runs the image encoder's linear layers in int8 on the CPU; everything else, and the
model's ``dtype``, stays float32 (:func:`model_precision` tells the two apart).
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this x86 CPU has AVX512-BF16 or AMX tiles."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # pragma: no cover - private API moved
                pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:  # pragma: no cover - non-Linux
        return False


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA if available, else CPU. Raises ValueError for an unusable device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError saying which are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map a precision name to the floating dtype used on ``device`` (``"int8"``: float32, the
    dtype of everything but the int8 layers). ``"auto"`` here knows only the device: bf16 where
    native, else fp32; the int8 choice needs the model (``precision_check.choose_precision``)."""
    check_precision(precision)
    if precision == "int8":
        return torch.float32
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """Inverse of :func:`resolve_precision` for concrete dtypes."""
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


def model_precision(model: torch.nn.Module) -> str:
    """The precision a :class:`segany.modeling.Sam` runs in: ``"int8"`` when its image encoder
    has int8 layers, else the name of its dtype (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    from .quantize import is_quantized

    return "int8" if is_quantized(model) else precision_name(model.dtype)
