"""Download, cache and verify the official Segment Anything checkpoints.

The three official SAM checkpoints are described in :data:`CHECKPOINTS`.  They are
stored in a cache directory (``$SEGANY_HOME`` if set, else ``~/.cache/segany``) and
verified against their known size and SHA-256 digest before use.

Typical use::

    from segany.hub import download_checkpoint
    path = download_checkpoint("vit_b")   # no network when already cached

Downloads are streamed into ``<filename>.part`` and resumed with an HTTP ``Range``
request when interrupted.  Once verified, the file is renamed atomically to its final
name and a small sidecar ``<filename>.sha256`` records the digest together with the
file's size and mtime, so later calls need not re-hash multi-gigabyte files.

Every failure is reported as a :class:`DownloadError` whose message tells the user
what went wrong and how to fix it by hand (e.g. on a machine without internet).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .io.files import durable_replace, sha256_file, write_text_atomic

__all__ = [
    "CHECKPOINTS",
    "CheckpointInfo",
    "DownloadError",
    "cache_dir",
    "checkpoint_path",
    "download_checkpoint",
    "sha256_file",
]

#: Official base URL of the SAM checkpoints (overridable with ``SEGANY_CHECKPOINT_URL_BASE``).
DEFAULT_URL_BASE = "https://dl.fbaipublicfiles.com/segment_anything"

_CHUNK_SIZE = 1 << 20  # 1 MiB
_USER_AGENT = "segany-hub/1"


@dataclass(frozen=True)
class CheckpointInfo:
    """Description of one downloadable checkpoint file."""

    variant: str  # "vit_b" | "vit_l" | "vit_h"
    url: str
    filename: str
    num_bytes: int
    sha256: str


CHECKPOINTS: dict[str, CheckpointInfo] = {
    "vit_b": CheckpointInfo(
        variant="vit_b",
        url=f"{DEFAULT_URL_BASE}/sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        num_bytes=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": CheckpointInfo(
        variant="vit_l",
        url=f"{DEFAULT_URL_BASE}/sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        num_bytes=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": CheckpointInfo(
        variant="vit_h",
        url=f"{DEFAULT_URL_BASE}/sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        num_bytes=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


class DownloadError(RuntimeError):
    """A checkpoint could not be downloaded or failed verification.

    The message is meant to be shown to the user as is.
    """


class _NetworkError(Exception):
    """Internal: a network-level failure, turned into a user-facing DownloadError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Return the checkpoint cache directory (not created here).

    ``$SEGANY_HOME`` if set and non-empty, else ``~/.cache/segany``; ``~`` is expanded.
    """
    env = os.environ.get("SEGANY_HOME")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/segany").expanduser()


def _info(variant: str) -> CheckpointInfo:
    try:
        return CHECKPOINTS[variant]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(CHECKPOINTS))
        raise ValueError(f"Unknown SAM variant {variant!r}; expected one of: {allowed}") from None


def checkpoint_path(variant: str, *, root: Path | None = None) -> Path:
    """Return where the checkpoint of ``variant`` lives in the cache.

    ``root`` overrides :func:`cache_dir`.  The file need not exist.
    Raises ``ValueError`` for an unknown variant.
    """
    info = _info(variant)
    base = cache_dir() if root is None else Path(root).expanduser()
    return base / info.filename


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# --------------------------------------------------------------------------- verification


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(_sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_sidecar(path: Path, digest: str) -> None:
    """Record ``digest`` with the file's current size and mtime (best effort)."""
    try:
        st = path.stat()
        payload = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        write_text_atomic(_sidecar_path(path), json.dumps(payload) + "\n")
    except OSError:
        pass  # e.g. read-only cache: we will simply re-hash next time


def _verified_digest(path: Path, expected_sha: str) -> str:
    """SHA-256 of ``path``, trusting the sidecar when size and mtime still match."""
    st = path.stat()
    side = _read_sidecar(path)
    if (
        side is not None
        and side.get("sha256") == expected_sha
        and side.get("size") == st.st_size
        and side.get("mtime_ns") == st.st_mtime_ns
    ):
        return expected_sha
    digest = sha256_file(path)
    if digest == expected_sha:
        _write_sidecar(path, digest)
    return digest


def _describe(info: CheckpointInfo) -> str:
    return f"{info.filename} ({info.num_bytes:,} bytes, sha256 {info.sha256})"


def _check_existing(path: Path, info: CheckpointInfo) -> None:
    """Raise DownloadError if the existing final file does not match ``info``."""
    try:
        size = path.stat().st_size
        digest = None if size != info.num_bytes else _verified_digest(path, info.sha256)
    except OSError as e:
        raise DownloadError(
            f"Could not read the SAM {info.variant} checkpoint at {path}: {e}"
        ) from e
    if size == info.num_bytes and digest == info.sha256:
        return
    if size != info.num_bytes:
        found = f"{size:,} bytes"
        kind = "incomplete or corrupt"
    else:
        found = f"sha256 {digest}"
        kind = "corrupt"
    raise DownloadError(
        f"The SAM {info.variant} checkpoint at {path} is {kind}: expected "
        f"{info.num_bytes:,} bytes with sha256 {info.sha256}, found {found}. "
        f"Delete the file so that it is downloaded again, or replace it with a good copy of "
        f"{_describe(info)}."
    )


# --------------------------------------------------------------------------- download


def _resolve_url(info: CheckpointInfo, url: str | None) -> str:
    if url is not None:
        return url
    base = os.environ.get("SEGANY_CHECKPOINT_URL_BASE")
    if base:
        return f"{base.rstrip('/')}/{info.filename}"
    return info.url


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes START-END/TOTAL`` into ``(START, TOTAL or None)``."""
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _network_reason(exc: BaseException, timeout: float) -> str:
    """A short human-readable reason for a network failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias of TimeoutError
        return f"timed out after {timeout:g} s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(req, timeout=timeout)


def _make_progress(progress: bool, info: CheckpointInfo, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return None
    return tqdm(
        total=info.num_bytes,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=info.filename,
    )


def _fetch(
    url: str, part: Path, info: CheckpointInfo, progress: bool, timeout: float
) -> str | None:
    """Stream ``url`` into ``part``, resuming if possible.

    Returns the SHA-256 of the complete ``.part`` when it was computed while streaming,
    or ``None`` when the caller must hash the file (HTTP 416).  Raises ``_NetworkError``
    on network failures (the ``.part`` is kept) and ``DownloadError`` on local I/O
    errors or when the server offers a file of the wrong size.
    """
    for _attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0:
                e.close()
                return None  # server has nothing past our offset: verify what we have
            raise _NetworkError(_network_reason(e, timeout)) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            raise _NetworkError(_network_reason(e, timeout)) from e

        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            if status == 206 and offset > 0:
                crange = _parse_content_range(resp.headers.get("Content-Range"))
                if crange is None or crange[0] != offset:
                    # Server resumed at the wrong place: start over without Range.
                    _unlink(part)
                    continue
                if crange[1] is not None and crange[1] != info.num_bytes:
                    raise DownloadError(
                        f"The server at {url} offers a file of {crange[1]:,} bytes, but the SAM "
                        f"{info.variant} checkpoint {_describe(info)} was expected. Check the URL "
                        f"(or SEGANY_CHECKPOINT_URL_BASE)."
                    )
                mode = "ab"
            elif status in (200, 206):
                offset = 0  # server ignored Range (or no Range sent): restart from zero
                length = resp.headers.get("Content-Length")
                if status == 200 and length and length.isdigit() and int(length) != info.num_bytes:
                    raise DownloadError(
                        f"The server at {url} offers {int(length):,} bytes, but the SAM "
                        f"{info.variant} checkpoint {_describe(info)} was expected. Check the URL "
                        f"(or SEGANY_CHECKPOINT_URL_BASE)."
                    )
                mode = "wb"
            else:
                raise _NetworkError(f"unexpected HTTP status {status}")

            hasher = hashlib.sha256()
            try:
                if mode == "ab":
                    with open(part, "rb") as f:
                        while chunk := f.read(_CHUNK_SIZE):
                            hasher.update(chunk)
                out = open(part, mode)  # noqa: SIM115 - closed in finally below
            except OSError as e:
                raise DownloadError(f"Could not write the partial download {part}: {e}") from e
            bar = _make_progress(progress, info, offset)
            written = offset
            try:
                while True:
                    try:
                        chunk = resp.read(_CHUNK_SIZE)
                    except (OSError, http.client.HTTPException, ValueError) as e:
                        raise _NetworkError(_network_reason(e, timeout)) from e
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise DownloadError(
                            f"Could not write the partial download {part}: {e}"
                        ) from e
                    hasher.update(chunk)
                    written += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if written > info.num_bytes:
                        break  # more than expected: stop, verification will reject it
            finally:
                out.close()
                if bar is not None:
                    bar.close()
            if written < info.num_bytes:
                raise _NetworkError(
                    f"connection closed after {written:,} of {info.num_bytes:,} bytes"
                )
            return hasher.hexdigest()
    raise _NetworkError("the server did not resume the download at the right offset")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def download_checkpoint(
    variant: str,
    *,
    root: Path | None = None,
    progress: bool = True,
    url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Return the path of the verified checkpoint of ``variant``, downloading it if needed.

    Args:
        variant: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        root: cache directory; defaults to :func:`cache_dir`.
        progress: show a tqdm progress bar while downloading.
        url: download from this URL instead of the official one (mirrors, tests).  Without
            it, ``$SEGANY_CHECKPOINT_URL_BASE`` (if set) replaces the official base URL.
        timeout: socket timeout in seconds for connecting and for each read.

    If the file is already in the cache with the right size and SHA-256 it is returned
    without touching the network.  Otherwise it is streamed into ``<filename>.part``
    (resuming an earlier partial download with an HTTP Range request), verified, and
    renamed into place.

    Raises:
        ValueError: unknown ``variant``.
        DownloadError: network failure (the ``.part`` file is kept for resuming), a
            downloaded file that fails verification (it is deleted), or an existing
            cached file that is corrupt (it is left alone; the message says what to do).
    """
    info = _info(variant)
    path = checkpoint_path(variant, root=root)

    if path.exists():
        _check_existing(path, info)
        return path

    src = _resolve_url(info, url)
    part = _part_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"Could not create the checkpoint cache directory {path.parent}: {e}. "
            f"Set SEGANY_HOME to a writable folder."
        ) from e

    try:
        part_size = part.stat().st_size if part.exists() else 0
        if part_size > info.num_bytes:
            _unlink(part)  # cannot be a prefix of the right file
            part_size = 0
        # A complete .part needs no network, only verification.
        digest = None if part_size == info.num_bytes else _fetch(src, part, info, progress, timeout)
        if digest is None:
            digest = sha256_file(part)
        size = part.stat().st_size
    except _NetworkError as e:
        kept = part.stat().st_size if part.exists() else 0
        where = "or set SEGANY_HOME to a folder that contains it, " if root is None else ""
        msg = (
            f"Could not download the SAM {variant} checkpoint from {src} ({e.reason}). "
            f"segany needs the file {_describe(info)}. Download it on a machine with internet "
            f"access and place it at {path} ({where}or pass the file's path directly)."
        )
        if kept:
            msg += (
                f" The partial download ({kept:,} of {info.num_bytes:,} bytes) was kept at "
                f"{part} and will be resumed on the next attempt."
            )
        raise DownloadError(msg) from None
    except OSError as e:
        raise DownloadError(f"Could not read the partial download {part}: {e}") from e

    if size != info.num_bytes or digest != info.sha256:
        _unlink(part)
        raise DownloadError(
            f"The downloaded SAM {variant} checkpoint from {src} failed verification: expected "
            f"{info.num_bytes:,} bytes with sha256 {info.sha256}, got {size:,} bytes with sha256 "
            f"{digest}. The partial file was deleted; try again, or download "
            f"{_describe(info)} by hand and place it at {path}."
        )

    try:
        durable_replace(part, path)
    except OSError as e:
        raise DownloadError(f"Could not move {part} to {path}: {e}") from e
    _write_sidecar(path, digest)
    return path
