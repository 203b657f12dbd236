"""The files a project keeps beside its database: the embedding cache's names (so that the store,
without the model, can tell how many images are cached for a model) and the removal of the
temporary files that killed writers leave behind.

Embedding cache files are ``<embeddings_dir>/<image sha256>_<model fingerprint>.safetensors``,
where the fingerprint is :func:`segany.io.embedding.model_fingerprint` of the model (a hash of
its weights): a new model has new files and never reads the old ones.

A writer of :mod:`segany.io.files` writes ``.<name>.<pid>.<hex>.tmp`` beside its destination
and renames it (folders: ``.<name>.tmp`` or ``.<random>.tmp``); a killed process leaves that
temporary behind. :func:`remove_stray_temp_files` removes them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "PIDLESS_GRACE_S",
    "STALE_S",
    "cache_file_name",
    "count_cached",
    "remove_stray_temp_files",
]

#: A temporary file whose writer is still running is kept, unless it is older than this
#: (seconds): its process id has then surely been reused.
STALE_S = 24 * 3600.0
#: A temporary folder (whose name has no process id) is removed once older than this.
PIDLESS_GRACE_S = 3600.0
_WITH_PID = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")


def cache_file_name(sha256: str, fingerprint: str) -> str:
    """The embedding cache file's name of an image (by content) for a model (by fingerprint)."""
    return f"{sha256}_{fingerprint}.safetensors"


def count_cached(folder: str | os.PathLike, sha256s: Iterable[str], fingerprint: str) -> int:
    """How many of the images ``sha256s`` have a cache file for ``fingerprint`` in ``folder``
    (one listing of the folder; 0 when it is missing)."""
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        return 0
    return sum(cache_file_name(sha, fingerprint) in present for sha in set(sha256s))


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _is_stray(path: Path, now: float) -> bool:
    try:
        age = now - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    match = _WITH_PID.match(path.name)
    if match is not None:
        return age > STALE_S or not _pid_running(int(match.group(1)))
    return age > PIDLESS_GRACE_S


def remove_stray_temp_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files (and folders) that killed writers left under ``folders``
    (searched recursively; nothing else is touched) and return their paths.

    A hidden ``.*.tmp`` file named with its writer's process id is removed when that process is
    not running on this machine (or the file is older than :data:`STALE_S`); a ``.*.tmp``
    folder without a process id in its name when it is older than :data:`PIDLESS_GRACE_S`
    (a live writer's temporaries are never removed). Symbolic links are not followed."""
    removed: list[Path] = []
    now = time.time()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            for name in list(dirnames):
                path = here / name
                if name.startswith(".") and name.endswith(".tmp"):
                    dirnames.remove(name)  # never descend into a temporary folder
                    if not path.is_symlink() and _is_stray(path, now):
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
            for name in filenames:
                path = here / name
                if name.startswith(".") and name.endswith(".tmp") and _is_stray(path, now):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    removed.append(path)
    return removed
