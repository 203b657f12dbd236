"""Image-embedding files: encode an image once, prompt it forever.

Format: safetensors with one tensor ``features`` ``(1, C, He, We)`` (stored in the dtype it was
computed in) and metadata ``original_size``, ``input_size`` (``"H,W"``), ``img_size``,
``model_fingerprint`` and ``format_version``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class EmbeddingRecord:
    """One encoded image: features ``(1, C, He, We)``, sizes as ``(H, W)``."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    img_size: int
    model_fingerprint: str


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash identifying the image encoder's weights (from its neck, which every weight
    change reaches), so that an embedding is not silently used with another model."""
    h = hashlib.sha256()
    for t in model.image_encoder.neck.state_dict().values():
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_embedding_file(path: str | os.PathLike, record: EmbeddingRecord) -> None:
    """Write ``record`` atomically (temp name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"features": record.features.detach().cpu().contiguous()},
        str(tmp),
        metadata={
            "format_version": FORMAT_VERSION,
            "original_size": f"{record.original_size[0]},{record.original_size[1]}",
            "input_size": f"{record.input_size[0]},{record.input_size[1]}",
            "img_size": str(record.img_size),
            "model_fingerprint": record.model_fingerprint,
        },
    )
    os.replace(tmp, path)


def load_embedding_file(path: str | os.PathLike) -> EmbeddingRecord:
    """Read a file written by :func:`save_embedding_file`; ValueError if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except FileNotFoundError:
        raise FileNotFoundError(f"embedding file not found: {path}") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a segany embedding file: {e}") from None
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
        raise ValueError(f"{path}: features must be (1, C, H, W), got {tuple(features.shape)}")
    return record
