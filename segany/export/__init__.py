"""Export to ONNX (needs torch, onnx and onnxscript at export time; running the exported files
needs only onnxruntime and numpy, see :mod:`segany.runtime`)."""

from .onnx import export_onnx

__all__ = ["export_onnx"]
