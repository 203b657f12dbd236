"""Torch-free inference: :class:`OnnxPredictor` runs an ONNX export (``segany export-onnx``) on
ONNX Runtime with numpy only."""

from .onnx_predictor import OnnxPredictor, parse_prompts, read_manifest

__all__ = ["OnnxPredictor", "parse_prompts", "read_manifest"]
