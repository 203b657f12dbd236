"""Writing exported models (atomically) and describing them in the manifest.

Models whose weights exceed ~2 GB (vit_h's encoder) are saved with their tensors in one external
data file next to the ``.onnx`` (``encoder.onnx.data``), as ONNX requires.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from ..io.files import atomic_files, atomic_write, sha256_file

#: Weight bytes above which a model is written with external data (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of ``proto``'s initializers (weights)."""
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


def external_locations(proto: onnx.ModelProto) -> set[str]:
    """Files (relative to the model) holding external tensor data of ``proto``."""
    out = set()
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return out


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> list[Path]:
    """Write ``proto`` to ``path`` atomically; weights over ~2 GB go to one file ``path.data``
    next to it (its name is recorded in the model: both are written in a temporary folder and
    moved into place, the model last), otherwise a stale ``path.data`` is removed. Returns the
    files written (the model first)."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        with atomic_files(path.parent, [data.name, path.name]) as tmp:
            onnx.save_model(
                proto,
                str(tmp / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
                size_threshold=1024,
            )
        return [path, data]
    with atomic_write(path) as tmp:
        onnx.save_model(proto, str(tmp), format="protobuf")
    data.unlink(missing_ok=True)
    return [path]


def _io_spec(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
        out.append(
            {
                "name": v.name,
                "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": shape,
            }
        )
    return out


def file_entry(files: list[Path], proto: onnx.ModelProto, precision: str) -> dict[str, Any]:
    """The manifest entry of a model written as ``files`` (the model first, then its external
    data): file name, precision, size, sha256 and the inputs/outputs (name, dtype, shape)."""
    main = files[0]
    entry: dict[str, Any] = {
        "file": main.name,
        "precision": precision,
        "bytes": main.stat().st_size,
        "sha256": sha256_file(main),
        "inputs": _io_spec(proto.graph.input),
        "outputs": _io_spec(proto.graph.output),
    }
    if len(files) > 1:
        entry["external_data"] = [
            {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files[1:]
        ]
    return entry
