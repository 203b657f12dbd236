"""Install the browser tool's JavaScript dependencies: ``npm ci`` from the pinned
``package-lock.json`` (install scripts off), then copy the files the tool needs (onnxruntime-web
for the decoder worker, swagger-ui-dist for ``/docs``) into ``static/vendor/`` (ignored by git).

Run: ``python -m segany.engine.web.build [--force]`` (``make web``). It does nothing when the
vendor files are there and newer than the lock file, unless ``--force``. Needs Node.js with npm
and the npm registry (or a filled npm cache: ``npm ci --offline`` is tried first).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from ...io.files import atomic_write
from .vendor import HERE, VENDOR_DIR, VENDOR_FILES, missing_vendor_files, vendor_source

LOCK = HERE / "package-lock.json"


def _up_to_date() -> bool:
    if missing_vendor_files():
        return False
    lock_time = LOCK.stat().st_mtime
    return all((VENDOR_DIR / n).stat().st_mtime >= lock_time for n in VENDOR_FILES)


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "npm not found: install Node.js 18+ with npm (Debian: apt-get install npm)"
        )
    base = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    if subprocess.run([*base, "--offline"], cwd=HERE, capture_output=True).returncode == 0:
        return
    proc = subprocess.run(base, cwd=HERE, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"npm ci failed in {HERE}:\n{proc.stdout}{proc.stderr}")


def install(force: bool = False) -> list[str]:
    """Install the vendor files (``npm ci`` when needed) and return their names."""
    if not force and _up_to_date():
        return list(VENDOR_FILES)
    if force or not all(vendor_source(n).is_file() for n in VENDOR_FILES):
        _npm_ci()
    missing = [str(vendor_source(n)) for n in VENDOR_FILES if not vendor_source(n).is_file()]
    if missing:
        raise SystemExit(f"npm ci did not install {', '.join(missing)}")
    for name in VENDOR_FILES:
        (VENDOR_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(VENDOR_DIR / name) as tmp:
            shutil.copyfile(vendor_source(name), tmp)
    return list(VENDOR_FILES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even when up to date")
    args = parser.parse_args(argv)
    names = install(force=args.force)
    print(f"{len(names)} browser files in {VENDOR_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
