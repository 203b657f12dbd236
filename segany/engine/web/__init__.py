"""The annotation tool's browser side: SAM's prompt decoder on ONNX Runtime Web in a Web Worker.

``static/`` holds the committed JavaScript (``decoder-worker.js``: the worker and its message
protocol; ``decoder-client.js``: the page-side promise API and mask drawing;
``decoder-test.html``: the page the browser tests drive). ``static/vendor/`` holds the
onnxruntime-web files, installed from the pinned ``package-lock.json`` by :mod:`.build` and never
committed. :func:`isolated_server` serves folders with the headers WASM threads need;
:func:`launch_chromium` starts Debian's Chromium under Playwright.
"""

from __future__ import annotations

from .browser import CHROMIUM_ARGS, browser_unavailable, chromium_path, launch_chromium
from .serve import app_server, isolated_server
from .vendor import (
    HERE,
    STATIC_DIR,
    VENDOR_DIR,
    VENDOR_FILES,
    missing_vendor_files,
)

__all__ = [
    "CHROMIUM_ARGS",
    "HERE",
    "STATIC_DIR",
    "VENDOR_DIR",
    "VENDOR_FILES",
    "app_server",
    "browser_unavailable",
    "chromium_path",
    "isolated_server",
    "launch_chromium",
    "missing_vendor_files",
]
