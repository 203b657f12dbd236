"""Annotation metrics over time (segany.engine.store.timeline, ``GET /api/stats/timeline``) on
SQLite and PostgreSQL with a clock the tests move by hand; the embedding-queue progress; the
served model registered as the current model version; stray temporary files removed on open."""

from __future__ import annotations

import datetime as dt
import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from segany.engine.server import create_app  # noqa: E402
from segany.engine.store import InvalidInput, Project  # noqa: E402
from segany.engine.store.timeline import bucket_start  # noqa: E402
from segany.formats import encode_coco_rle  # noqa: E402

TOKEN = "metrics-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    """A clock the tests set by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def project(tmp_path, db_url, clock):
    with Project.init(tmp_path / "proj", db_url=db_url, clock=clock) as p:
        yield p


def _png(seed: int, h: int = 24, w: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _box(y0: int, y1: int, x0: int, x1: int, h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _annotate(project, clock, t, image_id, who, clicks, seconds, **kw):
    """``clicks`` prompt events and one accepted mask at ``t`` seconds after T0."""
    clock.at(t)
    for _ in range(clicks):
        project.record_event("prompt", image_id=image_id, annotator=who, stage=kw.get("stage", 1))
    return project.add_mask(
        image_id, segmentation=_box(2, 6 + clicks, 3, 11), annotator=who,
        elapsed_ms=None if seconds is None else int(seconds * 1000), **kw,
    )  # fmt: skip


@pytest.fixture
def story(project, clock):
    """alice: hour 0 two masks on image 1 (30 s and 20 s, 4 and 2 clicks); hour 2 one mask on
    image 2 (10 s, 1 click) with model v2. bob: hour 1 one mask on image 1 (40 s, 3 clicks)
    and one untimed mask in stage 2."""
    for name in ("alice", "bob"):
        project.add_annotator(name)
    v1 = project.register_model("v1", "fp-v1", None)
    img1, _ = project.add_image_bytes(_png(1), "a.png")
    img2, _ = project.add_image_bytes(_png(2), "b.png")
    _annotate(project, clock, 60, img1.id, "alice", 4, 30, model_version=v1)
    _annotate(project, clock, 600, img1.id, "alice", 2, 20, model_version=v1)
    _annotate(project, clock, 3600 + 120, img1.id, "bob", 3, 40, model_version=v1)
    _annotate(project, clock, 3600 + 300, img2.id, "bob", 0, None, stage=2)
    clock.at(2 * 3600)
    v2 = project.register_model("v2", "fp-v2", "/models/v2.pt")
    _annotate(project, clock, 2 * 3600 + 60, img2.id, "alice", 1, 10, model_version=v2)
    return {"v1": v1, "v2": v2, "img1": img1, "img2": img2}


def _series(tl, stage, who):
    [s] = [s for s in tl["series"] if s["stage"] == stage and s["annotator"] == who]
    return s


# ----------------------------------------------------------------------------- store


def test_bucket_start():
    t = dt.datetime(2030, 1, 3, 17, 45, 12, 5, tzinfo=dt.UTC)  # a Thursday
    assert bucket_start(t, "hour") == dt.datetime(2030, 1, 3, 17, tzinfo=dt.UTC)
    assert bucket_start(t, "day") == dt.datetime(2030, 1, 3, tzinfo=dt.UTC)
    assert bucket_start(t, "week") == dt.datetime(2029, 12, 31, tzinfo=dt.UTC)  # Monday
    other = t.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert bucket_start(other, "hour") == bucket_start(t, "hour")


def test_timeline_hours(project, story):
    tl = project.timeline(bucket="hour")
    assert tl["bucket"] == "hour" and tl["bucket_seconds"] == 3600
    assert tl["buckets"] == [(T0 + dt.timedelta(hours=h)).isoformat() for h in range(3)]
    assert tl["start"] == T0.isoformat()
    assert tl["end"] == (T0 + dt.timedelta(hours=3)).isoformat()
    assert [(s["stage"], s["annotator"]) for s in tl["series"]] == [
        (1, "alice"), (1, "bob"), (2, "bob"),
    ]  # fmt: skip

    alice = _series(tl, 1, "alice")
    assert alice["masks"] == 3 and alice["prompts"] == 7 and alice["images"] == 2
    assert alice["seconds_per_mask"] == pytest.approx(20.0)
    assert alice["clicks_per_mask"] == pytest.approx(7 / 3)
    assert alice["masks_per_image"] == pytest.approx(1.5)
    first, second = alice["points"]
    assert first["t"] == T0.isoformat()
    assert (first["masks"], first["prompts"], first["images"]) == (2, 6, 1)
    assert first["seconds_per_mask"] == pytest.approx(25.0)
    assert first["clicks_per_mask"] == pytest.approx(3.0)
    assert first["masks_per_image"] == pytest.approx(2.0)
    assert second["t"] == (T0 + dt.timedelta(hours=2)).isoformat()  # no point for hour 1
    assert second["seconds_per_mask"] == pytest.approx(10.0)
    assert second["clicks_per_mask"] == pytest.approx(1.0)
    ids = [v["id"] for v in alice["model_versions"]]
    assert ids == [story["v1"].id, story["v2"].id]
    assert [v["masks"] for v in alice["model_versions"]] == [2, 1]

    bob2 = _series(tl, 2, "bob")
    assert bob2["masks"] == 1 and bob2["seconds_per_mask"] is None
    assert bob2["clicks_per_mask"] == 0.0
    assert bob2["model_versions"] == [{"id": None, "name": None, "masks": 1}]


def test_timeline_model_versions(project, story):
    tl = project.timeline()
    no_version, bundled, v1, v2 = tl["model_versions"]  # init registered the bundled model
    assert (bundled["name"], bundled["masks"], bundled["seconds_per_mask"]) == (
        "segany_tiny", 0, None,
    )  # fmt: skip
    assert no_version["id"] is None and no_version["masks"] == 1
    assert no_version["seconds_per_mask"] is None
    assert (v1["name"], v1["fingerprint"], v1["masks"]) == ("v1", "fp-v1", 3)
    assert v1["seconds_per_mask"] == pytest.approx(30.0)  # 30, 20, 40
    assert v1["created_at"] == T0.isoformat()
    assert (v2["name"], v2["masks"]) == ("v2", 1)
    assert v2["seconds_per_mask"] == pytest.approx(10.0)
    assert v2["created_at"] == (T0 + dt.timedelta(hours=2)).isoformat()


def test_timeline_buckets_and_filters(project, story, clock):
    day = project.timeline(bucket="day")
    assert day["buckets"] == [T0.replace(hour=0).isoformat()]
    assert _series(day, 1, "alice")["points"][0]["masks"] == 3
    assert project.timeline()["bucket"] == "hour"  # 3 hours: hourly buckets

    only_bob = project.timeline(annotator="bob", bucket="hour")
    assert {s["annotator"] for s in only_bob["series"]} == {"bob"}
    assert only_bob["buckets"] == [(T0 + dt.timedelta(hours=1)).isoformat()]
    v1 = [v for v in only_bob["model_versions"] if v["id"] == story["v1"].id][0]
    assert v1["masks"] == 1 and v1["seconds_per_mask"] == pytest.approx(40.0)

    stage2 = project.timeline(stage=2)
    assert [(s["stage"], s["annotator"]) for s in stage2["series"]] == [(2, "bob")]
    assert project.timeline(stage=3)["series"] == []

    # a week later: 170 hours is too many hourly buckets, so auto takes days
    _annotate(project, clock, 7 * 86400, story["img2"].id, "alice", 1, 5)
    auto = project.timeline()
    assert auto["bucket"] == "day" and len(auto["buckets"]) == 8


def test_timeline_empty_and_invalid(project):
    empty = project.timeline()
    assert empty["series"] == [] and empty["buckets"] == [] and empty["start"] is None
    for kwargs, allowed in [
        ({"bucket": "minute"}, "auto, hour, day, week"),
        ({"stage": 4}, "1, 2, 3"),
        ({"stage": True}, "1, 2, 3"),
        ({"annotator": "nobody"}, "annotators"),
    ]:
        with pytest.raises(InvalidInput, match=allowed):
            project.timeline(**kwargs)


# ----------------------------------------------------------------------------- API


@pytest.fixture
def client(project):
    def no_model():
        raise AssertionError("the metrics routes must not load the model")

    app = create_app(project, predictor_factory=no_model, token=TOKEN, prefetch=False)
    with TestClient(app) as c:
        yield c


def test_timeline_route(client, project, story):
    r = client.get("/api/stats/timeline?bucket=hour", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == project.timeline(bucket="hour")
    r = client.get("/api/stats/timeline", params={"annotator": "alice", "stage": "1"}, headers=AUTH)
    assert r.status_code == 200 and [s["annotator"] for s in r.json()["series"]] == ["alice"]
    assert client.get("/api/stats/timeline").status_code == 401
    for query, allowed in [
        ("bucket=year", "auto, hour, day, week"),
        ("stage=x", "1, 2 or 3"),
        ("stage=0", "1, 2 or 3"),
        ("annotator=mallory", "'alice', 'bob'"),
    ]:
        r = client.get(f"/api/stats/timeline?{query}", headers=AUTH)
        assert r.status_code == 422, (query, r.text)
        assert allowed in r.json()["detail"]


# ----------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def sam():
    import segany

    return segany.load_model("segany_tiny", precision="fp32", device="cpu")


def _wait(condition, what: str, tries: int = 600, pause: float = 0.05) -> None:
    """Wait (bounded: ``tries`` x ``pause`` seconds) until ``condition()`` holds."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(pause)
    raise AssertionError(f"timed out waiting for {what}")


def test_embedding_progress(tmp_path, db_url, sam, capsys):
    import segany
    from segany.cli.main import main
    from segany.engine.server.embeddings import register_served_model
    from segany.io.embedding import model_fingerprint

    fingerprint = model_fingerprint(sam)
    with Project.init(tmp_path / "proj", db_url=db_url) as project:
        for seed in (1, 2):
            project.add_image_bytes(_png(seed, 40, 56), f"{seed}.png")
        unknown = project.embedding_progress()
        assert unknown == {"images": 2, "cached": None, "fingerprint": None,
                           "model": "segany_tiny"}  # fmt: skip
        bundled = project.current_model()
        version = register_served_model(project, "segany_tiny", sam)
        assert version == bundled  # the project's own model: its version is reused
        assert project.embedding_fingerprint() == fingerprint

        loads = []

        def factory():
            loads.append(1)
            return segany.SamPredictor(sam)

        app = create_app(project, predictor_factory=factory, token=TOKEN, prefetch=False)
        service = app.state.embeddings
        with TestClient(app) as client:
            emb = client.get("/api/stats", headers=AUTH).json()["embeddings"]
            assert emb == {"images": 2, "cached": 0, "queued": 0, "encoding": None,
                           "fingerprint": fingerprint, "encoded": 0}  # fmt: skip
            assert loads == []  # known without loading the model
            r = client.get("/api/images/1/embedding", headers=AUTH)
            assert r.status_code == 200 and r.headers["X-Model-Fingerprint"] == fingerprint
            emb = client.get("/api/stats", headers=AUTH).json()["embeddings"]
            assert (emb["cached"], emb["encoded"], emb["queued"]) == (1, 1, 0)

            assert service.enqueue(2) and service.enqueue(2)
            assert client.get("/api/stats", headers=AUTH).json()["embeddings"]["queued"] == 1
            service.start()
            try:
                _wait(lambda: service.progress(project)["cached"] == 2, "the encoder")
                _wait(lambda: service.encoding is None, "the encoder to finish")
            finally:
                service.stop()
            emb = client.get("/api/stats", headers=AUTH).json()["embeddings"]
            assert emb == {"images": 2, "cached": 2, "queued": 0, "encoding": None,
                           "fingerprint": fingerprint, "encoded": 2}  # fmt: skip
        stats_args = ["project", "stats", str(project.root)]
        if db_url is not None:
            stats_args += ["--db", db_url]
    capsys.readouterr()
    assert main(stats_args) == 0
    out = capsys.readouterr().out
    assert (
        f"embeddings: 2 of 2 images cached for model segany_tiny (fingerprint {fingerprint})" in out
    )


def test_stats_without_a_known_fingerprint(project):
    def no_model():
        raise AssertionError("stats must not load the model")

    project.add_image_bytes(_png(3), "c.png")
    app = create_app(project, predictor_factory=no_model, token=TOKEN, prefetch=False)
    with TestClient(app) as client:
        emb = client.get("/api/stats", headers=AUTH).json()["embeddings"]
    assert emb == {"images": 1, "cached": None, "queued": 0, "encoding": None,
                   "fingerprint": None, "encoded": 0}  # fmt: skip


# ----------------------------------------------------------------------------- served model


def test_served_model_is_the_current_version(tmp_path, db_url, sam):
    import segany
    from segany.engine.server.embeddings import register_served_model
    from segany.engine.store import local_model_file
    from segany.io.embedding import model_fingerprint
    from tests.helpers import TINY, make_pair

    other = make_pair(TINY, seed=5)[1]
    root = tmp_path / "proj"
    with Project.init(root, db_url=db_url) as project:
        bundled = project.current_model()
        image, _ = project.add_image_bytes(_png(4), "d.png")

        def serve(name, model):
            """What ``segany serve --model name`` does before serving; then one mask."""
            version = register_served_model(project, name, model)
            app = create_app(
                project, predictor_factory=lambda: segany.SamPredictor(model), token=TOKEN,
                prefetch=False,
            )  # fmt: skip
            with TestClient(app) as client:
                r = client.post(
                    f"/api/images/{image.id}/masks", headers=AUTH,
                    json={"segmentation": encode_coco_rle(_box(2, 9, 3, 12)), "elapsed_ms": 900},
                )  # fmt: skip
                assert r.status_code == 201, r.text
                served = client.get("/api/model", headers=AUTH).json()["version"]
            assert served["id"] == version.id
            return version, r.json()["model_version_id"]

        first, mask_version = serve("tiny-random", other)
        assert first.id != bundled.id and mask_version == first.id
        assert first.name == "tiny-random" and first.file is None
        assert first.fingerprint == model_fingerprint(other)  # not a local file
        again, mask_version = serve("tiny-random", other)
        assert again == first and mask_version == first.id  # the same model: the same version

        # back to the bundled model, by name and then by its file's path: its old version,
        # although a newer one exists
        back, mask_version = serve("segany_tiny", sam)
        assert back == bundled and mask_version == bundled.id
        path = str(local_model_file("segany_tiny"))
        by_path, mask_version = serve(path, sam)
        assert by_path == bundled and mask_version == bundled.id
        assert len(project.list_models()) == 2
        assert project.embedding_fingerprint(first) == model_fingerprint(other)
        assert project.embedding_fingerprint(bundled) == model_fingerprint(sam)
    with Project.open(root, db_url=db_url) as project:
        assert project.current_model() == bundled  # kept in project.json
        newer = project.register_model("retrained", "sha256:" + "2" * 64)
        assert project.current_model() == newer  # a newly registered version becomes current
        masks = [v["masks"] for v in project.timeline()["model_versions"]]
        assert masks == [2, 2, 0]  # bundled, tiny-random, retrained


# ----------------------------------------------------------------------------- temp files


def test_open_removes_stray_temp_files(tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path / "proj"
    with Project.init(root) as project:
        image, _ = project.add_image_bytes(_png(5), "e.png")
    real = root / image.relpath
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    dead = child.pid  # a process that has exited
    hex12 = "0123456789ab"
    day_ago = time.time() - 2 * 86400

    def touch(path, *, age=None, folder=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            path.mkdir()
            (path / "decoder.onnx").write_bytes(b"partial")
        else:
            path.write_bytes(b"partial")
        if age is not None:
            os.utime(path, (age, age))
        return path

    stray = {
        touch(real.with_name(f".{real.name}.{dead}.{hex12}.tmp")),
        touch(root / "embeddings" / f".abc_fp.safetensors.{dead}.{hex12}.tmp"),
        touch(root / "embeddings" / f".old.safetensors.{os.getpid()}.{hex12}.tmp", age=day_ago),
        touch(root / "embeddings" / ".onnx_fp.tmp", folder=True, age=day_ago),
    }
    kept = [
        real,
        touch(real.with_name(f".{real.name}.{os.getpid()}.{hex12}.tmp")),  # a live writer's
        touch(root / "embeddings" / ".onnx_new.tmp", folder=True),  # being written
        touch(root / f".project.json.{dead}.{hex12}.tmp"),  # not under images/ or embeddings/
        touch(root / "embeddings" / "visible.tmp"),  # not hidden: not a writer's temporary
        touch(root / "other" / f".x.{dead}.{hex12}.tmp"),
    ]
    with Project.open(root) as project:
        assert set(project.removed_temp_files) == stray
        assert project.get_image(image.id).sha256 == image.sha256
    assert not any(p.exists() for p in stray)
    assert all(p.exists() for p in kept)
    assert real.read_bytes() == _png(5)
    with Project.open(root) as project:
        assert project.removed_temp_files == ()
