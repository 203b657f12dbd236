"""segany: Segment Anything (SAM) in PyTorch — faithful to the official weights, fast on
ordinary machines.

Quick start::

    import segany
    sam = segany.load_model("vit_b")            # or a checkpoint path
    predictor = segany.SamPredictor(sam)
    predictor.set_image(image)                  # (H, W, 3) uint8 RGB, PIL, gray, 16-bit ...
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])

Names are imported lazily, so torch-free parts (e.g. the ONNX Runtime predictor) can be used
where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": "build",
    "build_sam_model": "build",
    "build_sam_vit_b": "build",
    "build_sam_vit_h": "build",
    "build_sam_vit_l": "build",
    "build_sam_default": "build",
    "compile_model": "build",
    "load_model": "build",
    "sam_model_registry": "build",
    "set_precision": "build",
    "CheckpointError": "checkpoint",
    "infer_config": "checkpoint",
    "read_state_dict": "checkpoint",
    "VARIANTS": "config",
    "SamConfig": "config",
    "get_config": "config",
    "SamPredictor": "predictor",
    "SamAutomaticMaskGenerator": "amg",
    "OnnxPredictor": "runtime",
    "export_onnx": "export",
    "ResizeLongestSide": "transforms",
}

__all__ = [
    "CheckpointError",
    "OnnxPredictor",
    "ResizeLongestSide",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "VARIANTS",
    "build_sam",
    "build_sam_default",
    "build_sam_model",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "compile_model",
    "export_onnx",
    "get_config",
    "infer_config",
    "load_model",
    "read_state_dict",
    "sam_model_registry",
    "set_precision",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segany' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .amg import SamAutomaticMaskGenerator
    from .build import (
        build_sam,
        build_sam_default,
        build_sam_model,
        build_sam_vit_b,
        build_sam_vit_h,
        build_sam_vit_l,
        compile_model,
        load_model,
        sam_model_registry,
        set_precision,
    )
    from .checkpoint import CheckpointError, infer_config, read_state_dict
    from .config import VARIANTS, SamConfig, get_config
    from .export import export_onnx
    from .predictor import SamPredictor
    from .runtime import OnnxPredictor
    from .transforms import ResizeLongestSide
