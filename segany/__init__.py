"""segany: Segment Anything (SAM) in PyTorch — faithful to the official weights, fast on
ordinary machines.

Quick start::

    import segany
    sam = segany.load_model("vit_b")            # or a checkpoint path
    predictor = segany.SamPredictor(sam)
    predictor.set_image(image)                  # (H, W, 3) uint8 RGB, PIL, gray, 16-bit ...
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])
"""

from .build import (
    build_sam,
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
from .predictor import SamPredictor
from .transforms import ResizeLongestSide

build_sam_vit_h.__name__ = "build_sam_vit_h"
build_sam_default = build_sam_vit_h

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "ResizeLongestSide",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "build_sam_default",
    "build_sam_model",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "compile_model",
    "get_config",
    "infer_config",
    "load_model",
    "read_state_dict",
    "sam_model_registry",
    "set_precision",
]
