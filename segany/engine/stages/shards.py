"""SA-1B-style tar shards and their index, written so that a run can be resumed.

Layout of an output folder ``OUT``::

    OUT/sa_000000.tar     shard 0: per image ``sa_<id><ext>`` (the input file, byte for byte)
                          and ``sa_<id>.json`` (SA-1B per-image JSON, COCO RLE masks)
    OUT/sa_000001.tar     ...
    OUT/index.json        the finished shards (see :class:`ShardIndex`)

Every shard is written under a temporary name and renamed (:mod:`segany.io.files`), then the
index is rewritten atomically with the shard's entry: a shard listed in the index is complete,
and a killed run leaves at most hidden ``.*.tmp`` files, which the next run removes. Shards
are deterministic: members in image order, mtime 0, uid/gid 0, no user names, ustar format
(no timestamps anywhere), so the same input gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...formats.sa1b import write_sa1b_json
from ...io.files import atomic_write, sha256_file, write_json_atomic

__all__ = [
    "INDEX_FILE",
    "INDEX_FORMAT",
    "ShardImage",
    "ShardIndex",
    "extract_shard",
    "shard_name",
    "write_shard",
]

#: The index file's name, and its ``format`` / ``version``.
INDEX_FILE = "index.json"
INDEX_FORMAT = "segany-sa1b-shards"
INDEX_VERSION = 1
_TEMP_PREFIXES = (".sa_", f".{INDEX_FILE}.", ".report.json.", ".import-")


def shard_name(number: int) -> str:
    """The file name of shard ``number``: ``sa_000000.tar``, ``sa_000001.tar``, ..."""
    return f"sa_{number:06d}.tar"


@dataclass(frozen=True)
class ShardImage:
    """One image of a shard: its SA-1B ``image_id``, its input ``name`` (a relative POSIX
    path, the key a resumed run skips by), the input file ``path``, its size in pixels and its
    mask records (as :func:`segany.formats.write_sa1b_json` takes them; COCO RLE)."""

    image_id: int
    name: str
    path: Path
    width: int
    height: int
    annotations: Sequence[Mapping[str, Any]]

    @property
    def member(self) -> str:
        """The image's member name in the shard, ``sa_<id><ext>`` (ext lower case)."""
        return f"sa_{self.image_id}{self.path.suffix.lower()}"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(out: str | os.PathLike, number: int, images: Sequence[ShardImage]) -> dict:
    """Write shard ``number`` of ``images`` (in the given order) to ``out`` atomically and
    return its index entry: ``file``, ``sha256`` and ``bytes`` of the tar, ``masks`` (total)
    and ``images`` (per image ``id``, ``name``, ``file`` (member), ``sha256`` of the image
    bytes, ``width``, ``height``, ``masks``). Raises ValueError on a malformed mask record
    (nothing written then)."""
    out = Path(out)
    name = shard_name(number)
    entries = []
    with tempfile.TemporaryDirectory(prefix=f".{name}.", suffix=".tmp", dir=out) as work:
        work = Path(work)
        for im in images:
            write_sa1b_json(
                work / f"sa_{im.image_id}.json", image_id=im.image_id, file_name=im.member,
                width=im.width, height=im.height, annotations=im.annotations,
            )  # fmt: skip
        with (
            atomic_write(out / name) as tmp,
            tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for im in images:
                data = im.path.read_bytes()
                _add_member(tar, im.member, data)
                _add_member(
                    tar, f"sa_{im.image_id}.json", (work / f"sa_{im.image_id}.json").read_bytes()
                )
                entries.append(
                    {
                        "id": im.image_id,
                        "name": im.name,
                        "file": im.member,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "width": im.width,
                        "height": im.height,
                        "masks": len(im.annotations),
                    }
                )
    final = out / name
    return {
        "file": name,
        "sha256": sha256_file(final),
        "bytes": final.stat().st_size,
        "masks": sum(e["masks"] for e in entries),
        "images": entries,
    }


def extract_shard(path: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract the shard ``path`` into the folder ``dest`` (an SA-1B folder then: ``sa_<id>.json``
    next to ``sa_<id><ext>``); returns the extracted files. Only plain files with plain names
    are accepted (ValueError otherwise): nothing is written outside ``dest``."""
    dest = Path(dest)
    files = []
    with tarfile.open(path, "r") as tar:
        for m in tar.getmembers():
            if not m.isfile() or "/" in m.name or m.name in ("", ".", "..") or "\\" in m.name:
                raise ValueError(f"{path}: unexpected member {m.name!r} (not a shard)")
            src = tar.extractfile(m)
            assert src is not None
            with open(dest / m.name, "wb") as f:
                shutil.copyfileobj(src, f)
            files.append(dest / m.name)
    return files


class ShardIndex:
    """``OUT/index.json``: the run's ``settings`` (preset, generator settings, model, shard
    size) and its finished ``shards`` (entries of :func:`write_shard`, in order).

    :meth:`open` prepares a folder for a (resumed) run: it removes temporary files left by a
    killed run, checks that the index's settings are the run's, drops from the index every
    shard from the first one that is missing or whose sha256 does not match, and deletes
    shard files the index does not list (a shard renamed before its index entry was written),
    so that a redone image is never stored twice.
    """

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.data = data
        #: What :meth:`open` removed or dropped, one line each (for status output).
        self.notes: list[str] = []

    @property
    def path(self) -> Path:
        return self.out / INDEX_FILE

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @classmethod
    def open(cls, out: str | os.PathLike, settings: Mapping[str, Any]) -> ShardIndex:
        """The index of the folder ``out`` (created, with an empty index, when new). Raises
        ValueError when ``out`` holds an index of other ``settings`` or a damaged index."""
        import json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        notes = []
        for p in sorted(out.iterdir()):
            if p.name.startswith(_TEMP_PREFIXES) and p.name.endswith(".tmp"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                notes.append(f"removed {p.name}, left by an interrupted run")
        settings = json.loads(json.dumps(dict(settings)))
        path = out / INDEX_FILE
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                ok = data.get("format") == INDEX_FORMAT and isinstance(data.get("shards"), list)
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                raise ValueError(f"{path} is not a shard index; give a new --out folder")
            if data.get("settings") != settings:
                raise ValueError(
                    f"{out} was written with other settings ({data.get('settings')}); resume "
                    f"with the same settings or give a new --out folder (now: {settings})"
                )
        else:
            data = {
                "format": INDEX_FORMAT,
                "version": INDEX_VERSION,
                "settings": settings,
                "shards": [],
            }
        index = cls(out, data)
        index.notes = notes
        index._check_shards()
        if not path.exists():
            index.save()
        return index

    def _check_shards(self) -> None:
        good = []
        for entry in self.shards:
            f = self.out / entry["file"]
            if not f.is_file() or sha256_file(f) != entry["sha256"]:
                self.notes.append(
                    f"{entry['file']} is missing or changed: redoing it and later shards"
                )
                break
            good.append(entry)
        if len(good) != len(self.shards):
            self.data["shards"] = good
            self.save()
        listed = {e["file"] for e in good}
        for p in sorted(self.out.glob("sa_*.tar")):
            if p.name not in listed:
                p.unlink()
                self.notes.append(f"removed {p.name}, not in the index (redone)")

    def save(self) -> None:
        """Rewrite the index atomically."""
        write_json_atomic(self.path, self.data, indent=1, newline=True)

    def done_names(self) -> set[str]:
        """Input names of the images in finished shards."""
        return {im["name"] for s in self.shards for im in s["images"]}

    @property
    def next_shard(self) -> int:
        """The number of the next shard to write."""
        return len(self.shards)

    @property
    def next_image_id(self) -> int:
        """The SA-1B ``image_id`` of the next image (ids start at 1)."""
        return 1 + max((im["id"] for s in self.shards for im in s["images"]), default=0)

    def add(self, entry: dict[str, Any]) -> None:
        """Append a finished shard's entry and rewrite the index atomically."""
        self.shards.append(entry)
        self.save()
