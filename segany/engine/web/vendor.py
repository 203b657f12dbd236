"""Where the browser files live and which onnxruntime-web files the worker needs."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
ORT_DIST = HERE / "node_modules" / "onnxruntime-web" / "dist"

# The WASM-only ESM build the worker imports, the full build (WebGPU/JSEP) for later use, and
# the WASM binaries with their loaders: the threaded SIMD one, and the JSEP one, without which
# the full build reports "no available backend found".
VENDOR_FILES = (
    "ort.wasm.min.mjs",
    "ort.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort-wasm-simd-threaded.jsep.mjs",
    "ort-wasm-simd-threaded.jsep.wasm",
)


def missing_vendor_files() -> list[str]:
    """The names of :data:`VENDOR_FILES` absent from ``static/vendor/`` (empty when installed)."""
    return [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]
