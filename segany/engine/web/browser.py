"""Launching Debian's Chromium with Playwright for the browser tests and benchmarks.

Playwright (PyPI) drives the system's ``chromium`` through ``executable_path``; never run
``playwright install`` (it downloads browsers). The flags keep the browser offline and quiet,
and each launch gets a fresh profile (a new context)."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


def chromium_path() -> str | None:
    """The system Chromium's executable, or None when there is none."""
    for path in CHROMIUM_CANDIDATES:
        if shutil.which(path):
            return path
    return shutil.which("chromium")


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (what to install), or None when they can."""
    from .vendor import missing_vendor_files

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "chromium is missing (bash scripts/install-system-deps.sh, which make test runs)"
    missing = missing_vendor_files()
    if missing:
        return (
            f"onnxruntime-web files missing ({', '.join(missing)}): run make web "
            "(python -m segany.engine.web.build)"
        )
    return None


def launch_chromium(playwright: Any, timeout_ms: float = 60_000) -> Any:
    """A headless Chromium ``Browser`` from a ``sync_playwright()`` handle."""
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium executable (Debian: apt-get install chromium)")
    return playwright.chromium.launch(
        executable_path=path, headless=True, args=list(CHROMIUM_ARGS), timeout=timeout_ms
    )
