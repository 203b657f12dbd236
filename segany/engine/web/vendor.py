"""Where the browser files live and which npm files the tool needs (onnxruntime-web for the
worker, swagger-ui-dist for the server's offline ``/docs``)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
NODE_MODULES = HERE / "node_modules"
ORT_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
SWAGGER_DIST = NODE_MODULES / "swagger-ui-dist"

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
    "swagger-ui/swagger-ui-bundle.js",
    "swagger-ui/swagger-ui.css",
    "swagger-ui/favicon-32x32.png",
)


def vendor_source(name: str) -> Path:
    """The file in ``node_modules/`` that vendor file ``name`` is copied from."""
    if name.startswith("swagger-ui/"):
        return SWAGGER_DIST / name.removeprefix("swagger-ui/")
    return ORT_DIST / name


def missing_vendor_files() -> list[str]:
    """The names of :data:`VENDOR_FILES` absent from ``static/vendor/`` (empty when installed)."""
    return [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]
