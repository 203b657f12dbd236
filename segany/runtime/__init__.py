"""Torch-free inference: :class:`OnnxPredictor` runs an ONNX export (``segany export-onnx``) on
ONNX Runtime with numpy only."""

from ..io.onnx_manifest import read_manifest
from ..prompts import parse_prompts
from .onnx_predictor import OnnxPredictor

__all__ = ["OnnxPredictor", "parse_prompts", "read_manifest"]
