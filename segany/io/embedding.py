"""Image-embedding files: encode an image once, prompt it forever.

Format: safetensors with one tensor ``features`` ``(1, C, He, We)``, stored in the dtype it was
computed in (float32, float16 or bfloat16), and the string metadata ``format_version``,
``original_size`` and ``input_size`` (``"H,W"``), ``img_size`` and ``model_fingerprint``.

:class:`segany.SamPredictor` and :class:`segany.runtime.OnnxPredictor` both read and write
these files through this module, so a file made by one loads in the other. The module imports
neither torch nor onnx: features are read as numpy arrays.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "EmbeddingRecord",
    "decoder_fingerprint",
    "load_embedding_file",
    "model_fingerprint",
    "save_embedding_file",
]

FORMAT_VERSION = "1"

#: numpy dtypes of the safetensors dtypes a file may hold (bfloat16 has none: see _read).
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


@dataclass(frozen=True)
class EmbeddingRecord:
    """One encoded image.

    Attributes:
        features: the ``(1, C, He, We)`` embedding. As read from a file, a numpy array in the
            stored dtype (bfloat16, which numpy lacks, is widened exactly to float32). To write,
            a numpy array or a torch tensor (a tensor is written by ``safetensors.torch``, which
            keeps bfloat16).
        original_size: ``(H, W)`` of the image.
        input_size: ``(h, w)`` of the image resized into the model's input frame.
        img_size: the model's input size (longest side, e.g. 1024).
        model_fingerprint: :func:`model_fingerprint` of the model that computed it.
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    img_size: int
    model_fingerprint: str


def model_fingerprint(model: nn.Module) -> str:
    """Short hash identifying a :class:`segany.modeling.Sam`'s image-encoder weights (from its
    neck, which every weight change reaches), so that an embedding is not silently used with
    another model. The model's tensors are read through their own methods: no torch import."""
    h = hashlib.sha256()
    for t in model.image_encoder.neck.state_dict().values():
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def decoder_fingerprint(model: nn.Module) -> str:
    """Short hash of a :class:`segany.modeling.Sam`'s prompt-encoder and mask-decoder weights:
    what an exported decoder depends on besides the embedding (a decoder-only fine-tune keeps
    :func:`model_fingerprint` and changes this one)."""
    h = hashlib.sha256()
    for part in (model.prompt_encoder, model.mask_decoder):
        for t in part.state_dict().values():
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_embedding_file(path: str | os.PathLike, record: EmbeddingRecord) -> None:
    """Write ``record`` to ``path`` atomically (see :func:`segany.io.files.atomic_write`)."""
    metadata = {
        "format_version": FORMAT_VERSION,
        "original_size": f"{record.original_size[0]},{record.original_size[1]}",
        "input_size": f"{record.input_size[0]},{record.input_size[1]}",
        "img_size": str(record.img_size),
        "model_fingerprint": record.model_fingerprint,
    }
    features = record.features
    with atomic_write(path) as tmp:
        if isinstance(features, np.ndarray):
            from safetensors.numpy import save_file

            save_file({"features": np.ascontiguousarray(features)}, str(tmp), metadata=metadata)
        else:  # a torch tensor: only its own writer knows bfloat16
            from safetensors.torch import save_file

            features = features.detach().cpu().contiguous()
            save_file({"features": features}, str(tmp), metadata=metadata)


def _read(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, str]]:
    """The ``features`` array and the metadata of a safetensors file."""
    from safetensors import SafetensorError, deserialize, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = dict(deserialize(Path(path).read_bytes()))
    except FileNotFoundError:
        raise FileNotFoundError(f"embedding file not found: {path}") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a segany embedding file: {e}") from None
    if "features" not in tensors:
        raise ValueError(f"{path} is not a segany embedding file: it has no 'features' tensor")
    info = tensors["features"]
    shape = tuple(int(s) for s in info["shape"])
    if info["dtype"] == "BF16":  # the upper half of a float32: widen exactly
        bits = np.frombuffer(info["data"], np.dtype("<u2")).astype(np.uint32)
        features = (bits << 16).view(np.float32)
    elif info["dtype"] in _NUMPY_DTYPES:
        dtype = np.dtype(_NUMPY_DTYPES[info["dtype"]])
        features = np.frombuffer(info["data"], dtype.newbyteorder("<")).astype(dtype)
    else:
        raise ValueError(f"{path}: features must be float, got {info['dtype']}")
    return features.reshape(shape), metadata


def load_embedding_file(
    path: str | os.PathLike,
    *,
    img_size: int | None = None,
    embedding_shape: Sequence[int] | None = None,
    fingerprint: str | None = None,
) -> EmbeddingRecord:
    """Read a file written by :func:`save_embedding_file`.

    Args:
        path: the file.
        img_size, embedding_shape: the model the embedding is for, checked when
            ``embedding_shape`` is given: its input size and embedding shape ``(1, C, He, We)``.
        fingerprint: when given, the :func:`model_fingerprint` the file must carry.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an embedding file, or one that does not fit ``img_size`` /
            ``embedding_shape``, or made by another model than ``fingerprint``.
    """
    features, meta = _read(path)
    try:
        record = EmbeddingRecord(
            features=features,
            original_size=tuple(int(v) for v in meta["original_size"].split(",")),
            input_size=tuple(int(v) for v in meta["input_size"].split(",")),
            img_size=int(meta["img_size"]),
            model_fingerprint=meta["model_fingerprint"],
        )
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} is not a segany embedding file (bad metadata: {e})") from None
    if features.ndim != 4 or features.shape[0] != 1:
        raise ValueError(f"{path}: features must be (1, C, H, W), got {features.shape}")
    if embedding_shape is not None and (
        record.img_size != img_size or features.shape != tuple(embedding_shape)
    ):
        raise ValueError(
            f"{path}: embedding {features.shape} at img_size {record.img_size} does not fit "
            f"this model (expects {tuple(embedding_shape)} at {img_size})"
        )
    if fingerprint is not None and record.model_fingerprint != fingerprint:
        raise ValueError(
            f"{path} was computed with a different model (fingerprint "
            f"{record.model_fingerprint} vs {fingerprint}); re-encode the image or pass "
            f"check_model=False"
        )
    return record
