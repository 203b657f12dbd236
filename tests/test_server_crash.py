"""Crash safety of ``segany serve``: the server runs in a subprocess on 127.0.0.1, a burst of
writes (mask POSTs, image uploads) from a few threads is cut by SIGKILL after some of them are
acknowledged, the server is started again on the same project, and then every acknowledged
write is there unchanged and nothing is half-written: every row is whole, the SQLite file passes
``PRAGMA integrity_check``, and the images folder holds only intact files (plus at most hidden
``.*.tmp`` files of the atomic writer)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from sqlalchemy import create_engine, text  # noqa: E402

from segany.data.sample import sample_image  # noqa: E402
from segany.engine.store import Project  # noqa: E402
from segany.engine.store.project import SQLITE_FILE  # noqa: E402
from segany.formats import decode_coco_rle, encode_coco_rle  # noqa: E402
from segany.io.files import sha256_file  # noqa: E402

W, H = 96, 64  # the scene the masks are drawn on
BURST = 200  # most writes one burst attempts
KILL_AFTER = 40  # acknowledged writes before the SIGKILL
THREADS = 3
TMP_NAME = re.compile(r"^\..+\.tmp$")  # what segany.io.files leaves when killed mid-write


@contextlib.contextmanager
def _serve(root: Path, db_url: str | None) -> Iterator[tuple[subprocess.Popen, str, dict]]:
    """``segany serve root`` on 127.0.0.1 and a free port, answering /api/health: yields the
    process, the base URL and the auth headers; SIGKILLs it on the way out if still running."""
    cmd = [sys.executable, "-m", "segany", "serve", str(root), "--port", "0", "--host", "127.0.0.1"]
    if db_url is not None:
        cmd += ["--db", db_url]
    env = {**os.environ, "SEGANY_TOKEN": ""}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=120), "segany serve printed no URL"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, url
        base, token = url.split("/?token=")
        for _ in range(400):
            try:
                if httpx.get(base + "/api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "segany serve exited"
            time.sleep(0.05)
        else:
            pytest.fail("segany serve never answered /api/health")
        yield proc, base, {"Authorization": f"Bearer {token}"}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def _png(width: int, height: int, seed: int) -> bytes:
    image, _ = sample_image(width, height, seed=seed)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _rect_rle(i: int) -> dict:
    """The COCO RLE of write ``i``: a distinct small rectangle on the (H, W) scene."""
    mask = np.zeros((H, W), bool)
    y, x = divmod(i, 20)
    mask[y * 5 : y * 5 + 3 + i % 3, x * 4 : x * 4 + 2 + i % 2] = True
    return encode_coco_rle(mask)


def _burst(proc: subprocess.Popen, send) -> tuple[dict[int, dict], set[int]]:
    """Call ``send(client, i)`` for i in 0..BURST-1 from THREADS threads; a watcher thread
    SIGKILLs ``proc`` once KILL_AFTER writes were acknowledged. ``send`` returns the JSON of
    an acknowledged write and raises on any other answer (re-raised here). Returns
    {i: acknowledged JSON} and the set of i sent (at most one unanswered per thread)."""
    lock = threading.Lock()
    counter = iter(range(BURST))
    acked: dict[int, dict] = {}
    attempted: set[int] = set()
    enough = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            while True:
                with lock:
                    i = next(counter, None)
                    if i is None:
                        return
                    attempted.add(i)
                try:
                    body = send(client, i)
                except httpx.TransportError:
                    return  # the server is gone
                except Exception as e:  # noqa: BLE001 - reported by the main thread
                    with lock:
                        errors.append(e)
                    enough.set()
                    return
                with lock:
                    acked[i] = body
                    if len(acked) >= KILL_AFTER:
                        enough.set()

    def killer() -> None:
        enough.wait(timeout=120)
        os.kill(proc.pid, signal.SIGKILL)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
        assert not t.is_alive(), "a burst thread did not finish"
    if errors:
        raise errors[0]
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert len(acked) >= KILL_AFTER, "the server was killed before enough writes"
    assert len(attempted) < BURST, "the kill came after the burst: nothing was cut"
    assert len(attempted) - len(acked) <= THREADS
    print(f"crash: {len(acked)} acknowledged, {len(attempted)} sent", file=sys.stderr)
    return acked, attempted


def _check_database(root: Path, db_url: str | None) -> None:
    """No half-written rows: every mask decodes to its image's (h, w) with version >= 1; the
    SQLite file (if the project uses it) passes PRAGMA integrity_check."""
    if db_url is None:
        con = sqlite3.connect(root / SQLITE_FILE)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            con.close()
    engine = create_engine(db_url or f"sqlite:///{root / SQLITE_FILE}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT m.id, m.counts, m.height, m.width, m.version, i.height, i.width "
                    "FROM masks m LEFT JOIN images i ON i.id = m.image_id"
                )
            ).all()
    finally:
        engine.dispose()
    for mid, counts, h, w, version, ih, iw in rows:
        assert ih is not None, f"mask {mid} has no image"
        assert (h, w) == (ih, iw) and version >= 1, (mid, h, w, version)
        assert decode_coco_rle({"size": [h, w], "counts": counts}).shape == (h, w)


def _check_image_files(root: Path, db_url: str | None, records: list[dict]) -> None:
    """Every image row's file is whole (its sha256); every other file in the images folder is
    either whole (named by its sha256: written, then killed before its row) or a hidden
    ``.*.tmp`` of the atomic writer, at most one per writing thread (nothing sweeps them)."""
    project = Project.open(root, db_url=db_url)
    try:
        for r in records:
            assert sha256_file(project.image_file(r["id"])) == r["sha256"]
    finally:
        project.close()
    stray = 0
    for path in (root / "images").rglob("*"):
        if path.is_dir():
            continue
        if TMP_NAME.match(path.name):
            stray += 1
            continue
        assert sha256_file(path) == path.name.split(".")[0], f"a damaged file: {path}"
    assert stray <= THREADS


def test_sigkill_during_a_mask_burst(tmp_path, db_url):
    root = tmp_path / "proj"
    Project.init(root, db_url=db_url).close()
    scene = _png(W, H, seed=7)
    with _serve(root, db_url) as (proc, base, auth):
        r = httpx.post(
            base + "/api/images", files={"file": ("scene.png", scene, "image/png")},
            headers=auth, timeout=30,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        image = r.json()

        def send(client, i: int) -> dict:
            r = client.post(
                f"{base}/api/images/{image['id']}/masks",
                json={"segmentation": _rect_rle(i), "label": f"m{i}", "source": "manual"},
                headers=auth,
            )  # fmt: skip
            assert r.status_code == 201, r.text
            return r.json()

        acked, attempted = _burst(proc, send)

    with _serve(root, db_url) as (proc, base, auth):
        stored = httpx.get(f"{base}/api/images/{image['id']}/masks", headers=auth, timeout=30)
        assert stored.status_code == 200
        by_id = {m["id"]: m for m in stored.json()}
        for i, m in acked.items():
            assert m["id"] in by_id, f"acknowledged mask {i} is lost"
            assert by_id[m["id"]]["segmentation"] == m["segmentation"] == _rect_rle(i)
            assert by_id[m["id"]]["label"] == f"m{i}"
        labels = [m["label"] for m in by_id.values()]
        assert len(labels) == len(set(labels)), "a write was stored twice"
        for m in by_id.values():
            i = int(m["label"][1:])
            assert i in attempted and m["segmentation"] == _rect_rle(i) and m["version"] >= 1
        assert len(acked) <= len(by_id) <= len(attempted)
        r = httpx.get(f"{base}/api/images/{image['id']}/file", headers=auth, timeout=30)
        assert r.status_code == 200 and r.content == scene
    _check_database(root, db_url)
    _check_image_files(root, db_url, [image])


def test_sigkill_during_an_upload_burst(tmp_path, db_url):
    root = tmp_path / "proj"
    Project.init(root, db_url=db_url).close()
    pngs = {i: _png(48, 32, seed=1000 + i) for i in range(BURST)}
    with _serve(root, db_url) as (proc, base, auth):

        def send(client, i: int) -> dict:
            r = client.post(
                base + "/api/images", files={"file": (f"im{i}.png", pngs[i], "image/png")},
                headers=auth,
            )  # fmt: skip
            assert r.status_code == 201, r.text
            return r.json()

        acked, attempted = _burst(proc, send)

    with _serve(root, db_url) as (proc, base, auth):
        stored = httpx.get(base + "/api/images", headers=auth, timeout=30)
        assert stored.status_code == 200
        by_id = {r["id"]: r for r in stored.json()}
        for i, rec in acked.items():
            assert rec["id"] in by_id, f"acknowledged image {i} is lost"
            got = httpx.get(f"{base}/api/images/{rec['id']}/file", headers=auth, timeout=30)
            assert got.status_code == 200 and got.content == pngs[i]
        names = {r["file_name"] for r in by_id.values()}
        assert len(names) == len(by_id), "an upload was stored twice"
        assert names <= {f"im{i}.png" for i in attempted}
        assert len(acked) <= len(by_id) <= len(attempted)
        records = list(by_id.values())
    _check_database(root, db_url)
    _check_image_files(root, db_url, records)
