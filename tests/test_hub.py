"""Tests for segany.hub: checkpoint download, resume, caching and verification.

No test touches the network: a small fake checkpoint is served by a threaded
``http.server`` bound to 127.0.0.1, and ``segany.hub.CHECKPOINTS`` is patched so that
its size and sha256 match the fake file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segany import hub
from segany.hub import CheckpointInfo, DownloadError

DATA = random.Random(1234).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
FILENAME = "sam_vit_b_01ec64.pth"


# --------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.owner.data`` with optional Range support, by ``owner.mode``."""

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        owner: _Server = self.server.owner  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        owner.requests.append({"path": self.path, "range": rng})
        if owner.mode == "404":
            self.send_error(404, "Not Found")
            return
        data = owner.data
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and owner.mode in ("range", "cut"):
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if owner.mode == "cut":
            # Announce the full length but drop the connection half-way through.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server:
    """A threaded HTTP server on 127.0.0.1 that records the requests it receives."""

    def __init__(self, mode: str = "range", data: bytes = DATA) -> None:
        self.mode = mode
        self.data = data
        self.requests: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.closed = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.base}/{FILENAME}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


def _closed_port_url() -> str:
    """URL of a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{FILENAME}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Never touch the real cache, and start without the override variables."""
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "default_home"))
    monkeypatch.delenv("SEGANY_CHECKPOINT_URL_BASE", raising=False)


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(mode: str = "range", data: bytes = DATA) -> _Server:
        srv = _Server(mode, data)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


@pytest.fixture
def server(serve) -> _Server:
    return serve("range")


def _patch_info(monkeypatch, **changes) -> CheckpointInfo:
    info = CheckpointInfo(
        variant="vit_b",
        url=_closed_port_url(),
        filename=FILENAME,
        num_bytes=len(DATA),
        sha256=SHA,
    )
    info = dataclasses.replace(info, **changes)
    monkeypatch.setitem(hub.CHECKPOINTS, "vit_b", info)
    return info


@pytest.fixture
def fake(monkeypatch, server) -> CheckpointInfo:
    """CHECKPOINTS['vit_b'] replaced by the fake file served by ``server``."""
    return _patch_info(monkeypatch, url=server.url)


# --------------------------------------------------------------------------- table & paths


def test_official_checkpoint_table():
    assert set(hub.CHECKPOINTS) == {"vit_b", "vit_l", "vit_h"}
    expected = {
        "vit_h": ("sam_vit_h_4b8939.pth", 2_564_550_879, "a7bf3b02f3ebf126"),
        "vit_l": ("sam_vit_l_0b3195.pth", 1_249_524_607, "3adcc4315b642a4d"),
        "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383, "ec2df62732614e57"),
    }
    for variant, (filename, size, sha_prefix) in expected.items():
        info = hub.CHECKPOINTS[variant]
        assert info.variant == variant
        assert info.filename == filename
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything/{filename}"
        assert info.num_bytes == size
        assert info.sha256.startswith(sha_prefix)
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hub.CHECKPOINTS["vit_b"].num_bytes = 1  # type: ignore[misc]


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGANY_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "segany"
    monkeypatch.setenv("SEGANY_HOME", "")
    assert hub.cache_dir() == Path.home() / ".cache" / "segany"
    monkeypatch.setenv("SEGANY_HOME", "~/some/where")
    assert hub.cache_dir() == Path.home() / "some" / "where"
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "h"))
    assert hub.cache_dir() == tmp_path / "h"
    assert not (tmp_path / "h").exists()  # not created by cache_dir()


def test_checkpoint_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "h"))
    assert hub.checkpoint_path("vit_h") == tmp_path / "h" / "sam_vit_h_4b8939.pth"
    assert hub.checkpoint_path("vit_l", root=tmp_path) == tmp_path / "sam_vit_l_0b3195.pth"


def test_unknown_variant():
    for fn in (hub.checkpoint_path, hub.download_checkpoint):
        with pytest.raises(ValueError, match="vit_x") as exc:
            fn("vit_x")
        for allowed in ("vit_b", "vit_l", "vit_h"):
            assert allowed in str(exc.value)


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(DATA)
    assert hub.sha256_file(p) == SHA
    assert hub.sha256_file(str(p)) == SHA


# --------------------------------------------------------------------------- downloads


def test_fresh_download(tmp_path, server, fake):
    path = hub.download_checkpoint("vit_b", root=tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / FILENAME
    assert path.read_bytes() == DATA
    assert not (tmp_path / "cache" / (FILENAME + ".part")).exists()
    side = json.loads((tmp_path / "cache" / (FILENAME + ".sha256")).read_text())
    assert side["sha256"] == SHA
    assert side["size"] == len(DATA)
    assert side["mtime_ns"] == path.stat().st_mtime_ns
    assert server.requests == [{"path": f"/{FILENAME}", "range": None}]


def test_second_call_uses_cache_without_network_or_rehash(tmp_path, server, fake, monkeypatch):
    first = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    server.close()  # any network access now fails

    def no_hash(path):
        raise AssertionError("should trust the sidecar instead of re-hashing")

    monkeypatch.setattr(hub, "sha256_file", no_hash)
    second = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert second == first
    assert len(server.requests) == 1


def test_stale_sidecar_triggers_rehash(tmp_path, server, fake, monkeypatch):
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    calls = []
    real = hub.sha256_file

    def counting(p):
        calls.append(Path(p))
        return real(p)

    monkeypatch.setattr(hub, "sha256_file", counting)
    assert hub.download_checkpoint("vit_b", root=tmp_path, progress=False) == path
    assert calls == [path]
    side = json.loads(path.with_name(FILENAME + ".sha256").read_text())
    assert side["mtime_ns"] == path.stat().st_mtime_ns
    assert len(server.requests) == 1


def test_progress_bar(tmp_path, server, fake, capsys):
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=True)
    assert path.read_bytes() == DATA
    assert FILENAME in capsys.readouterr().err


def test_resume_sends_range(tmp_path, server, fake):
    (tmp_path / (FILENAME + ".part")).write_bytes(DATA[:100_000])
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert [r["range"] for r in server.requests] == ["bytes=100000-"]
    assert not (tmp_path / (FILENAME + ".part")).exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path, serve, monkeypatch):
    srv = serve("ignore_range")
    _patch_info(monkeypatch, url=srv.url)
    # Garbage prefix: only a full restart (not an append) can produce the right file.
    (tmp_path / (FILENAME + ".part")).write_bytes(b"\0" * 100_000)
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert [r["range"] for r in srv.requests] == ["bytes=100000-"]


def test_cut_connection_keeps_part_and_resumes(tmp_path, serve, monkeypatch):
    cut = serve("cut")
    _patch_info(monkeypatch, url=cut.url)
    with pytest.raises(DownloadError) as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    msg = str(exc.value)
    assert "connection closed" in msg
    assert str(tmp_path / FILENAME) in msg
    part = tmp_path / (FILENAME + ".part")
    assert part.read_bytes() == DATA[: len(DATA) // 2]
    assert not (tmp_path / FILENAME).exists()

    good = serve("range")
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False, url=good.url)
    assert path.read_bytes() == DATA
    assert [r["range"] for r in good.requests] == [f"bytes={len(DATA) // 2}-"]
    assert not part.exists()


def test_complete_part_is_verified_without_network(tmp_path, server, fake):
    (tmp_path / (FILENAME + ".part")).write_bytes(DATA)
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == []


def test_416_with_short_part_fails_verification(tmp_path, serve, monkeypatch):
    srv = serve("range", data=DATA[:150_000])  # server's copy is truncated
    _patch_info(monkeypatch, url=srv.url)
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(DATA[:150_000])
    with pytest.raises(DownloadError, match="failed verification") as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert SHA in str(exc.value)
    assert [r["range"] for r in srv.requests] == ["bytes=150000-"]
    assert not part.exists()
    assert not (tmp_path / FILENAME).exists()


def test_wrong_sha_raises_and_leaves_no_file(tmp_path, server, monkeypatch):
    bad_sha = "0" * 64
    _patch_info(monkeypatch, url=server.url, sha256=bad_sha)
    with pytest.raises(DownloadError) as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    msg = str(exc.value)
    assert bad_sha in msg  # expected digest
    assert SHA in msg  # actual digest
    assert not (tmp_path / FILENAME).exists()
    assert not (tmp_path / (FILENAME + ".part")).exists()
    assert not (tmp_path / (FILENAME + ".sha256")).exists()


def test_wrong_size_from_server_is_rejected(tmp_path, serve, monkeypatch):
    srv = serve("range", data=b"<html>not a checkpoint</html>")
    _patch_info(monkeypatch, url=srv.url)
    with pytest.raises(DownloadError, match="offers") as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert f"{len(DATA):,}" in str(exc.value)
    assert not (tmp_path / FILENAME).exists()


def test_unreachable_url_gives_helpful_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "home"))
    info = _patch_info(monkeypatch)  # info.url points at a closed port
    with pytest.raises(DownloadError) as exc:
        hub.download_checkpoint("vit_b", progress=False, timeout=5)
    msg = str(exc.value)
    target = tmp_path / "home" / FILENAME
    assert str(target) in msg
    assert FILENAME in msg
    assert info.url in msg
    assert SHA in msg
    assert f"{len(DATA):,} bytes" in msg
    assert "SEGANY_HOME" in msg
    assert not target.exists()


def test_unreachable_url_keeps_part(tmp_path, monkeypatch):
    _patch_info(monkeypatch)
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(DATA[:1000])
    with pytest.raises(DownloadError, match="resumed") as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False, url=_closed_port_url())
    assert str(part) in str(exc.value)
    assert part.read_bytes() == DATA[:1000]


def test_http_error_is_download_error(tmp_path, serve, monkeypatch):
    srv = serve("404")
    _patch_info(monkeypatch, url=srv.url)
    with pytest.raises(DownloadError, match="HTTP 404") as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert str(tmp_path / FILENAME) in str(exc.value)
    assert len(srv.requests) == 1


def test_timeout_is_download_error(tmp_path, monkeypatch):
    _patch_info(monkeypatch)
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{FILENAME}"
        with pytest.raises(DownloadError, match="timed out") as exc:
            hub.download_checkpoint("vit_b", root=tmp_path, progress=False, url=url, timeout=0.3)
    assert FILENAME in str(exc.value)


def test_corrupt_existing_file_is_reported_not_deleted(tmp_path, server, fake):
    path = tmp_path / FILENAME
    garbage = bytes(len(DATA))
    path.write_bytes(garbage)
    with pytest.raises(DownloadError) as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    msg = str(exc.value)
    assert str(path) in msg
    assert "corrupt" in msg
    assert "Delete" in msg
    assert SHA in msg  # expected
    assert hashlib.sha256(garbage).hexdigest() in msg  # found
    assert path.read_bytes() == garbage  # user's file left alone
    assert server.requests == []


def test_incomplete_existing_file_is_reported(tmp_path, server, fake):
    path = tmp_path / FILENAME
    path.write_bytes(DATA[:1234])
    with pytest.raises(DownloadError, match="incomplete") as exc:
        hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert "1,234 bytes" in str(exc.value)
    assert f"{len(DATA):,} bytes" in str(exc.value)
    assert path.read_bytes() == DATA[:1234]
    assert server.requests == []


def test_segany_home_respected(tmp_path, server, fake, monkeypatch):
    home = tmp_path / "my_home"
    monkeypatch.setenv("SEGANY_HOME", str(home))
    path = hub.download_checkpoint("vit_b", progress=False)
    assert path == home / FILENAME
    assert path.read_bytes() == DATA


def test_url_base_env_var(tmp_path, server, monkeypatch):
    _patch_info(monkeypatch)  # official-style url is unreachable
    monkeypatch.setenv("SEGANY_CHECKPOINT_URL_BASE", server.base + "/")
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert [r["path"] for r in server.requests] == [f"/{FILENAME}"]


def test_explicit_url_overrides_env(tmp_path, server, monkeypatch):
    _patch_info(monkeypatch)
    monkeypatch.setenv("SEGANY_CHECKPOINT_URL_BASE", "http://127.0.0.1:1/nowhere")
    path = hub.download_checkpoint("vit_b", root=tmp_path, progress=False, url=server.url)
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1
