"""The int8 CPU path: the image encoder's linear layers with int8 weights, around the
architecture.

:func:`quantize_encoder` swaps every ``nn.Linear`` of the image encoder (attention ``qkv`` and
``proj``, MLP ``lin1`` and ``lin2``: ~97 % of its multiply-adds at 1024 px) for an
:class:`Int8Linear` holding **the same** ``weight``/``bias`` Parameters, so the state dict, its
names and the fp32 values are untouched; :func:`dequantize_encoder` swaps them back and the model
is bit-exactly the fp32 one again, without reloading. Each :class:`Int8Linear` keeps the int8
weights (symmetric, one scale per output channel) packed for PyTorch's quantized engine, and runs
``torch.ops.quantized.linear_dynamic``: the activation is quantized to uint8 per call (one scale
per tensor, from its min/max), multiplied in int8 with int32 accumulation, and returned in fp32.

Everything else stays fp32: attention scores and softmax (a product of two activations; int8
kernels for it measured 2-3x *slower* than fp32 here), layer norms, GELU, the patch embedding and
the neck's convolutions (~1.5 % of the work each, not worth an error), the prompt encoder and the
mask decoder.

**u8 x s8 saturation.** x86 CPUs without VNNI multiply uint8 by int8 with ``vpmaddubsw``, which
adds pairs of products into int16 and saturates when ``2 * 255 * 127 > 32767``. Where the CPU has
no VNNI the weights are quantized to 7 bits (``[-63, 63]``; ``2 * 255 * 63 < 32767``, no
saturation possible), as segany's ONNX int8 export does; with VNNI (int32 accumulation in one
instruction) they use the full ``[-127, 127]``.

**Memory.** The int8 weights are a quarter of the fp32 ones, but the fp32 values must stay for
the way back. Once packed, the linear layers' fp32 weights move to one unlinked temporary file
(in ``tempfile.gettempdir()``, i.e. ``$TMPDIR``) mapped back into the same Parameters: the state
dict and its values are unchanged, but the pages are file-backed and not resident until something
reads them (``state_dict()`` consumers, the way back), so an int8 model holds less memory than
the fp32 one. :func:`dequantize_encoder` copies them back into ordinary memory. Where the file
cannot be written the weights simply stay in memory (``offload=False`` asks for that).

**Engines**, measured on the vit_b encoder (docs/benchmarks.md, "int8 on CPU"): ``x86`` on AVX2
CPUs (within 1 % of ``onednn`` on an AMD EPYC Zen 2, the fastest on an Intel CPU capped at AVX2),
``fbgemm`` on Intel AVX512 CPUs, ``x86`` on AMD AVX512 CPUs (Zen 4: 1.4x faster than fbgemm). The engine is chosen per CPU class (:func:`cpu_class`) when the weights
are packed; the process-wide ``torch.backends.quantized.engine`` is restored afterwards.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: CPU classes, fastest first: what :func:`cpu_class` returns.
CPU_CLASSES = ("amx", "avx512-bf16", "avx512-vnni", "avx512", "avx-vnni", "avx2", "other")
#: Environment variable overriding :func:`cpu_class` (for tests, or to state a CPU by hand).
CPU_CLASS_ENV = "SEGANY_CPU_CLASS"
#: The quantized engine used per CPU class (the fastest measured; see the module docstring).
ENGINE_BY_CLASS = {
    "amx": "fbgemm",
    "avx512-bf16": "fbgemm",
    "avx512-vnni": "fbgemm",
    "avx512": "fbgemm",
    "avx-vnni": "x86",
    "avx2": "x86",
    "other": "qnnpack",
}
#: Where one vendor's CPUs of a class measured another engine fastest: on an AMD EPYC Zen 4
#: (AVX512-BF16, VNNI) vit_b's int8 encoder took 3.75 s on x86 against 5.30 s on fbgemm.
ENGINE_BY_VENDOR_CLASS = {
    ("AuthenticAMD", "avx512-bf16"): "x86",
    ("AuthenticAMD", "avx512-vnni"): "x86",
    ("AuthenticAMD", "avx512"): "x86",
}
_VNNI_CLASSES = ("amx", "avx512-bf16", "avx512-vnni", "avx-vnni")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line of ``/proc/cpuinfo`` (its value), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - non-Linux
        pass
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo_field("flags") or "").split())


def cpu_vendor() -> str:
    """The CPU's vendor id (``"GenuineIntel"``, ``"AuthenticAMD"``, ...; ``""`` if unknown)."""
    return _cpuinfo_field("vendor_id") or ""


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what the platform says)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


@functools.cache
def _detected_cpu_class() -> str:
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512-vnni" if "avx512_vnni" in flags else "avx512"
    if "avx2" in flags:
        return "avx-vnni" if "avx_vnni" in flags else "avx2"
    if not flags:  # no /proc/cpuinfo: ask torch what it dispatches to
        capability = torch.backends.cpu.get_cpu_capability()
        if capability.startswith("AVX512"):
            return "avx512"
        if capability == "AVX2":
            return "avx2"
    return "other"


def cpu_class() -> str:
    """This CPU's class, one of :data:`CPU_CLASSES`: what decides the int8 engine, the weight
    range and (with :mod:`segany.precision`) what ``precision="auto"`` picks. The environment
    variable ``SEGANY_CPU_CLASS`` overrides the detection; an unknown value is an error."""
    forced = os.environ.get(CPU_CLASS_ENV)
    if forced:
        if forced not in CPU_CLASSES:
            raise ValueError(f"{CPU_CLASS_ENV} must be one of {CPU_CLASSES}, got {forced!r}")
        return forced
    return _detected_cpu_class()


def int8_scheme(cls: str | None = None) -> tuple[str, int]:
    """``(engine, weight_qmax)`` for a CPU class (default: this CPU's) on this CPU's vendor: the
    quantized engine and the largest int8 weight magnitude (127 with VNNI, 63 without; see the module docstring)."""
    cls = cpu_class() if cls is None else cls
    engine = ENGINE_BY_VENDOR_CLASS.get((cpu_vendor(), cls), ENGINE_BY_CLASS[cls])
    if engine not in torch.backends.quantized.supported_engines:
        engine = "qnnpack" if "qnnpack" in torch.backends.quantized.supported_engines else engine
    return engine, 127 if cls in _VNNI_CLASSES else 63


def weight_bits(qmax: int) -> int:
    """The int8 weights' bit width for a largest magnitude ``qmax`` (127: 8 bits, 63: 7 bits)."""
    return qmax.bit_length() + 1


class Int8Linear(nn.Module):
    """``y = x @ weight.T + bias`` with int8 weights and dynamically quantized activations.

    Made from an ``nn.Linear`` by :meth:`from_linear`: it holds that layer's ``weight``
    ``(out, in)`` and ``bias`` ``(out,)`` Parameters themselves (fp32, unchanged), so the state
    dict is the fp32 one, and the packed int8 copy as a plain attribute (not saved). The packed
    copy is rebuilt when the weights change (``load_state_dict``, in-place edits). Input
    ``(..., in)`` float32 on the CPU; output ``(..., out)`` float32. Inference only: a call that
    would need gradients is an error (turn the model back to fp32 to train).
    """

    in_features: int
    out_features: int

    def __init__(
        self, weight: nn.Parameter, bias: nn.Parameter | None, *, engine: str, qmax: int
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = bias
        self.engine = engine
        self.qmax = qmax
        self._packed: Any = None
        self._packed_key: tuple[int, ...] | None = None
        #: True while ``weight`` lives in the mapped temporary file (module docstring, Memory)
        self.offloaded = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, engine: str, qmax: int) -> Int8Linear:
        """An :class:`Int8Linear` sharing ``linear``'s Parameters (nothing is copied)."""
        return cls(linear.weight, linear.bias, engine=engine, qmax=qmax)

    def to_linear(self) -> nn.Linear:
        """The plain ``nn.Linear`` with this layer's Parameters (the fp32 layer, bit-exact; an
        offloaded weight is copied back into ordinary memory first)."""
        if self.offloaded:
            with torch.no_grad():
                self.weight.data = self.weight.data.clone()
            self.offloaded = False
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features, linear.out_features = self.in_features, self.out_features
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def _key(self) -> tuple[int, ...]:
        b = self.bias
        return (self.weight.data_ptr(), self.weight._version,
                0 if b is None else b.data_ptr(), 0 if b is None else b._version)  # fmt: skip

    def packed_weight(self) -> Any:
        """The packed int8 weights (per-output-channel symmetric scales), packed on first use
        and again whenever ``weight`` or ``bias`` changed."""
        key = self._key()
        if self._packed is None or key != self._packed_key:
            with torch.no_grad():
                w = self.weight.detach().float()
                scale = (w.abs().amax(dim=1).clamp_min(1e-12) / self.qmax).double()
                zero = torch.zeros(w.shape[0], dtype=torch.long)
                with warnings.catch_warnings():  # quantized tensors are deprecated, not gone
                    warnings.simplefilter("ignore", UserWarning)
                    qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
                bias = None if self.bias is None else self.bias.detach().float()
                previous = torch.backends.quantized.engine
                torch.backends.quantized.engine = self.engine
                try:
                    self._packed = torch.ops.quantized.linear_prepack(qw, bias)
                finally:
                    torch.backends.quantized.engine = previous
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise RuntimeError(
                f"int8 layers run on the CPU in float32; got a {x.dtype} input on {x.device}: "
                "set_precision(model, 'fp32') (or 'bf16') before moving the model"
            )
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            raise RuntimeError(
                "the int8 image encoder is inference-only: run it under torch.no_grad() / "
                "torch.inference_mode(), or set_precision(model, 'fp32') to train"
            )
        # reduce_range=False: the activation keeps all 8 bits; the weights' range is what
        # avoids the u8 x s8 saturation (module docstring)
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed_weight(), False)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, engine={self.engine}, weight_qmax={self.qmax}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # the packed weights are rebuilt, not pickled or copied
        state["_packed"] = None
        state["_packed_key"] = None
        state["offloaded"] = False  # a copy's weights are ordinary tensors
        return state


def _swap(root: nn.Module, make: Any, kind: type[nn.Module]) -> int:
    count = 0
    for name, child in list(root.named_children()):
        if type(child) is kind:
            setattr(root, name, make(child))
            count += 1
        else:
            count += _swap(child, make, kind)
    return count


def _offload_weights(layers: list[Int8Linear]) -> bool:
    """Move the fp32 ``weight`` of each layer into one unlinked, memory-mapped temporary file
    (same Parameter objects, same values; see the module docstring). Layers already offloaded
    are skipped. Returns False, changing nothing, when the file cannot be written."""
    todo = [layer for layer in layers if not layer.offloaded]
    if not todo:
        return True
    try:
        with tempfile.TemporaryFile(prefix="segany-int8-") as f:
            for layer in todo:
                f.write(layer.weight.detach().contiguous().numpy())
            f.flush()
            maps, offset = [], 0
            for layer in todo:  # one mapping each, so each weight keeps a storage of its own
                shape = tuple(layer.weight.shape)
                maps.append(np.memmap(f, np.float32, "r+", offset=offset, shape=shape))
                offset += 4 * layer.weight.numel()
    except (OSError, ValueError) as e:
        warnings.warn(f"int8: fp32 weights kept in memory (temporary file failed: {e})",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        return False
    with torch.no_grad():  # the mappings outlive the (already unlinked) file's descriptor
        for layer, mapped in zip(todo, maps, strict=True):
            layer.weight.data = torch.from_numpy(mapped)
            layer.offloaded = True
            layer._packed_key = layer._key()  # same values: the packed copy stays valid
    return True


def is_offloaded(model: nn.Module) -> bool:
    """True when ``model``'s int8 layers hold their fp32 weights in the mapped file."""
    return any(isinstance(m, Int8Linear) and m.offloaded for m in model.image_encoder.modules())


def quantize_encoder(
    model: nn.Module, cls: str | None = None, *, offload: bool = True
) -> nn.Module:
    """Run ``model.image_encoder``'s linear layers in int8 (in place; see the module docstring).

    ``model`` is a :class:`segany.modeling.Sam` in fp32 on the CPU; ``cls`` a CPU class
    (default: this CPU's) deciding the engine and weight range; ``offload`` moves the layers'
    fp32 weights to a mapped temporary file so they are not resident (module docstring, Memory).
    Already-int8 layers are left as they are. Returns ``model``.
    """
    encoder = model.image_encoder
    weight = encoder.patch_embed.proj.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(
            f"int8 needs the model in float32 on the CPU; it is {weight.dtype} on "
            f"{weight.device} (load it with device='cpu', or set_precision(model, 'fp32') first)"
        )
    engine, qmax = int8_scheme(cls)

    def make(linear: nn.Module) -> nn.Module:
        return Int8Linear.from_linear(linear, engine=engine, qmax=qmax)  # type: ignore[arg-type]

    _swap(encoder, make, nn.Linear)
    layers = [layer for layer in encoder.modules() if isinstance(layer, Int8Linear)]
    for layer in layers:  # pack now, so the first image does not pay for it
        layer.packed_weight()
    if offload:
        _offload_weights(layers)
    return model


def dequantize_encoder(model: nn.Module) -> nn.Module:
    """Undo :func:`quantize_encoder` (in place): the fp32 layers, bit-exact, their weights in
    ordinary memory again. Returns ``model``."""

    _swap(model.image_encoder, lambda layer: layer.to_linear(), Int8Linear)
    return model


def is_quantized(model: nn.Module) -> bool:
    """True when ``model``'s image encoder runs int8 layers."""
    return any(isinstance(m, Int8Linear) for m in model.image_encoder.modules())


def reference_linear(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` computes, in plain fp32 arithmetic on the quantized values (the eager
    reference for the agreement test): per-channel weight fake-quantization and per-tensor uint8
    activation fake-quantization, as the kernel does."""
    w = layer.weight.detach().float()
    w_scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / layer.qmax
    wq = (w / w_scale).round().clamp(-layer.qmax, layer.qmax) * w_scale
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_scale = max((hi - lo) / 255.0, 1e-12)
    zero = min(max(round(-lo / x_scale), 0), 255)
    xq = ((x / x_scale).round() + zero).clamp(0, 255)
    xq = (xq - zero) * x_scale
    return F.linear(xq, wq, None if layer.bias is None else layer.bias.detach().float())
