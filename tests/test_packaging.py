"""The built wheel carries what an installed segany needs offline: the bundled model, the
browser tool's pages and scripts, the npm files `make web` installs (ONNX Runtime Web, Swagger
UI) and the database migrations; never node_modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from segany.engine.web import STATIC_DIR, VENDOR_FILES, missing_vendor_files

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_has_the_built_assets(tmp_path):
    missing = missing_vendor_files()
    if missing and os.environ.get("CI"):
        pytest.fail(
            f"the vendor files are missing on CI: {missing} (python -m segany.engine.web.build)"
        )
    if missing:
        pytest.skip(f"run python -m segany.engine.web.build first (missing {missing})")
    # build from a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*cache",
        "runs", "demo_out", "serve_project",
    )  # fmt: skip
    shutil.copytree(ROOT, src, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("segany-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    web = "segany/engine/web/static/"
    expected = {f"{web}vendor/{name}" for name in VENDOR_FILES}
    expected |= {f"{web}{p.relative_to(STATIC_DIR).as_posix()}" for p in STATIC_DIR.glob("*.*")}
    expected |= {f"{web}app/{p.name}" for p in (STATIC_DIR / "app").iterdir() if p.is_file()}
    expected |= {
        "segany/models/segany_tiny.safetensors",
        "segany/engine/store/migrations/env.py",
        "segany/engine/store/migrations/script.py.mako",
        "segany/engine/store/migrations/versions/0001_first_schema.py",
    }
    assert expected <= names, sorted(expected - names)
    assert f"{web}app/index.html" in names and f"{web}decoder-worker.js" in names
    assert not [n for n in names if "node_modules" in n]
