"""File helpers used everywhere in segany (torch-free): the one atomic writer, file hashing and
the image file suffixes segany reads.

Every file segany writes goes through :func:`atomic_write`: the data goes to a unique temporary
name in the destination folder, is flushed and fsynced, and is then renamed onto the
destination (``os.replace``, atomic on POSIX and Windows). Readers see the old file or the
complete new one, never a partial one; a killed process leaves at most a hidden ``.*.tmp`` file
beside the destination, and the destination as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_dir",
    "atomic_files",
    "atomic_write",
    "durable_replace",
    "is_image_file",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: File suffixes (lower case) that segany treats as images when it scans a folder; where an
#: image of a given stem is looked for, in this order of preference.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
)

_HASH_CHUNK = 1 << 20


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_SUFFIXES` (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def durable_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the complete file ``src`` onto ``dst`` (same folder) durably: fsync ``src``, then
    ``os.replace``, then fsync the folder. The last step of every atomic write here; public for
    writers that stage a file their own way (the resumable checkpoint download)."""
    _fsync_file(Path(src))
    os.replace(src, dst)
    _fsync_dir(Path(dst).parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Context manager for writing ``path`` atomically through a writer that takes a path.

    Yields a temporary path in the same folder; write the file there (``torch.save(obj, tmp)``,
    ``save_file(tensors, tmp)``, ``image.save(tmp)``, ...). On a clean exit the temporary file is
    fsynced, given permissions ``mode`` if set, and renamed onto ``path``; on any error it is
    removed and ``path`` is left as it was. The folder must exist.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        durable_replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, mode=mode) as tmp, open(tmp, "xb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(
    path: str | os.PathLike, obj: Any, *, indent: int | None = None, newline: bool = False
) -> None:
    """Serialise ``obj`` to JSON (NaN/inf refused; compact unless ``indent``) and write it to
    ``path`` atomically (see :func:`atomic_write`). ``newline`` adds a final ``\\n``.

    Raises ValueError naming ``path`` when ``obj`` is not JSON-serialisable.
    """
    separators = (",", ":") if indent is None else None
    try:
        text = json.dumps(obj, allow_nan=False, indent=indent, separators=separators)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot write {os.fspath(path)!s} as JSON: {e}") from None
    write_text_atomic(path, text + "\n" if newline else text)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike, names: Sequence[str]) -> Iterator[Path]:
    """Context manager for writing files of ``folder`` that refer to each other by name (a model
    and its external-data file), which therefore cannot be written under temporary names.

    Yields an empty temporary folder inside ``folder``; write each of ``names`` there under its
    final name. On a clean exit every file is fsynced and renamed into ``folder`` in the order
    of ``names`` (put the file that refers to the others last: whoever finds it finds them
    complete); on any error nothing is renamed. The temporary folder is removed either way.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".", suffix=".tmp", dir=folder))
    try:
        yield tmp
        for name in names:
            _fsync_file(tmp / name)
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(folder)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager for replacing the folder ``path`` as a whole.

    Yields an empty temporary folder beside ``path``; fill it, and on a clean exit the old
    ``path`` (if any) is removed and the temporary folder renamed onto it. On an error the
    temporary folder is removed and ``path`` is left as it was. Write the files inside with
    :func:`atomic_write` or the ``write_*_atomic`` helpers so that each is durable.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of the file at ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
