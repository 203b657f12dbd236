"""The project store (segany.engine.store): layout, content addressing, bad files, masks with
versions, leases, annotators, events and statistics, migrations, export/import. Every database
test runs on the embedded SQLite file and on a real PostgreSQL server (the ``postgres_url``
fixture; each test gets a fresh database)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from sqlalchemy import create_engine, inspect, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from segany.engine.store import (  # noqa: E402
    InvalidInput,
    LeaseConflict,
    NotFound,
    Project,
    VersionConflict,
)
from segany.engine.store.db import HEAD, current_revision, make_engine, schema_diffs, upgrade  # noqa: E402
from segany.formats import (  # noqa: E402
    decode_coco_rle,
    encode_coco_rle,
    uncompressed_to_coco_rle,
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def pg_url(fresh_postgres_url):
    """A fresh PostgreSQL database, for the PostgreSQL-only tests."""
    return fresh_postgres_url


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def project(tmp_path, db_url, clock):
    with Project.init(tmp_path / "proj", db_url=db_url, clock=clock) as p:
        yield p


# ----------------------------------------------------------------------------- helpers


def png_bytes(h: int = 24, w: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 64, w: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` 1-bit pixels (its data is short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def box_rle(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return encode_coco_rle(m)


def project_files(p: Project) -> list[str]:
    return sorted(str(f.relative_to(p.root)) for f in p.images_dir.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- layout, schema


def test_init_layout_and_schema(project, db_url):
    root = project.root
    assert (root / "images").is_dir() and (root / "embeddings").is_dir()
    config = json.loads((root / "project.json").read_text())
    assert config["format"] == "segany-project" and config["model"] == "segany_tiny"
    assert (root / "segany.db").exists() == (db_url is None)
    assert current_revision(project.engine) == HEAD
    assert schema_diffs(project.engine) == []
    model = project.current_model()
    assert model is not None and model.name == "segany_tiny"
    assert model.fingerprint.startswith("sha256:")


def test_init_twice_and_open_errors(tmp_path, project, db_url):
    with pytest.raises(InvalidInput, match="already a segany project"):
        Project.init(project.root, db_url=db_url)
    with pytest.raises(NotFound, match="not a segany project"):
        Project.open(tmp_path / "nothing")
    project.add_image_bytes(png_bytes(), "a.png")
    with Project.open(project.root, db_url=db_url) as again:
        assert [i.file_name for i in again.list_images()] == ["a.png"]


def test_sqlite_settings(tmp_path):
    with Project.init(tmp_path / "p") as p, p.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_postgresql_password_not_stored(tmp_path, pg_url):
    with_password = make_url(pg_url).set(password="s3cret-pw")
    url = with_password.render_as_string(hide_password=False)
    with Project.init(tmp_path / "p", db_url=url) as p:
        p.add_image_bytes(png_bytes(), "a.png")
    text_ = (tmp_path / "p" / "project.json").read_text()
    assert "s3cret-pw" not in text_ and json.loads(text_)["db"].startswith("postgresql+psycopg://")
    with Project.open(tmp_path / "p") as p:  # the stored URL (trust auth: no password needed)
        assert len(p.list_images()) == 1


# ----------------------------------------------------------------------------- migrations


def test_upgrade_from_first_schema_keeps_data(tmp_path, db_url):
    root = tmp_path / "old"
    root.mkdir()
    (root / "images").mkdir()
    url = make_url(db_url) if db_url else make_url(f"sqlite:///{root / 'segany.db'}")
    engine = make_engine(url)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    assert "token_hash" not in {c["name"] for c in inspect(engine).get_columns("annotators")}
    now = dt.datetime(2029, 5, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO annotators (name, created_at) VALUES (:n, :t)"),
            {"n": "old-annotator", "t": now.replace(tzinfo=None)},
        )
        conn.execute(
            text(
                "INSERT INTO images (sha256, file_name, ext, width, height, status, created_at)"
                " VALUES (:s, :f, '.png', 32, 24, 'done', :t)"
            ),
            {"s": "ab" * 32, "f": "old.png", "t": now.replace(tzinfo=None)},
        )
        conn.execute(
            text("INSERT INTO events (kind, image_id, stage, at) VALUES ('prompt', 1, 1, :t)"),
            {"t": now.replace(tzinfo=None)},
        )
    engine.dispose()
    config = {"format": "segany-project", "version": 1, "model": "segany_tiny", "db": db_url}
    (root / "project.json").write_text(json.dumps(config))
    with Project.open(root, db_url=db_url) as p:
        assert current_revision(p.engine) == HEAD
        assert schema_diffs(p.engine) == []
        cols = {c["name"] for c in inspect(p.engine).get_columns("annotators")}
        assert "token_hash" in cols
        assert "elapsed_ms" in {c["name"] for c in inspect(p.engine).get_columns("events")}
        [image] = p.list_images()
        assert (image.file_name, image.status, image.width, image.height) == (
            "old.png",
            "done",
            32,
            24,
        )
        assert image.created_at == now
        assert p.get_annotator("old-annotator").name == "old-annotator"
        [event] = p.list_events()
        assert event.kind == "prompt" and event.elapsed_ms is None
        new, token = p.add_annotator("new-annotator")  # the new column works
        assert p.annotator_for_token(token) == new


def test_upgrade_to_lineage_keeps_model_versions(tmp_path, db_url):
    """A database at revision 0002 upgrades in place: its model versions stay (without
    lineage), and dataset versions and retrained versions with their evaluation work."""
    root = tmp_path / "old"
    (root / "images").mkdir(parents=True)
    url = make_url(db_url) if db_url else make_url(f"sqlite:///{root / 'segany.db'}")
    engine = make_engine(url)
    upgrade(engine, "0002")
    assert "dataset_versions" not in inspect(engine).get_table_names()
    now = dt.datetime(2029, 5, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (name, fingerprint, file, created_at) "
                "VALUES ('old-model', 'sha256:old', NULL, :t)"
            ),
            {"t": now.replace(tzinfo=None)},
        )
    engine.dispose()
    config = {"format": "segany-project", "version": 1, "model": "segany_tiny", "db": db_url}
    (root / "project.json").write_text(json.dumps(config))
    with Project.open(root, db_url=db_url) as p:
        assert current_revision(p.engine) == HEAD
        assert schema_diffs(p.engine) == []
        [old] = p.list_models()
        assert (old.name, old.fingerprint, old.created_at) == ("old-model", "sha256:old", now)
        assert (old.parent_id, old.dataset_version_id, old.evaluation) == (None, None, None)
        assert p.next_dataset_name() == "v0001"
        data = p.add_dataset_version(
            "v0001", content_hash="ab" * 32, path="datasets/v0001", stages=[2, 1],
            holdout=["cd" * 32], counts={"train": {"images": 1, "masks": 2}},
        )  # fmt: skip
        assert data.stages == [1, 2] and p.get_dataset_version("v0001") == data
        assert p.find_dataset_version("ab" * 32) == data and p.next_dataset_name() == "v0002"
        with pytest.raises(InvalidInput, match="exists already"):
            p.add_dataset_version(
                "v0001", content_hash="ab" * 32, path="x", stages=[1], holdout=[], counts={}
            )
        new = p.register_model(
            "retrained", "sha256:new", str(root / "m.safetensors"), parent=old,
            dataset_version=data, evaluation={"score": 0.5}, make_current=False,
        )  # fmt: skip
        assert (new.parent_id, new.dataset_version_id, new.evaluation) == (
            old.id, data.id, {"score": 0.5},
        )  # fmt: skip
        assert p.current_model() == old  # registered, not switched
        assert p.switch_model(new) == new and p.current_model() == new
        assert p.model == str(root / "m.safetensors")
    with Project.open(root, db_url=db_url) as p:  # kept in project.json
        assert p.current_model() == new and p.model == str(root / "m.safetensors")
        with pytest.raises(InvalidInput, match="no weights file"):
            p.switch_model(old)
        with pytest.raises(NotFound):
            p.register_model("x", "sha256:x", parent=99)


def test_foreign_database_refused(tmp_path):
    path = tmp_path / "p" / "segany.db"
    path.parent.mkdir()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE things (id INTEGER)"))
    engine.dispose()
    with pytest.raises(Exception, match="no segany schema version"):
        Project.init(tmp_path / "p")


# ----------------------------------------------------------------------------- images


def test_content_addressing(project):
    data = png_bytes()
    a, created_a = project.add_image_bytes(data, "first.png")
    b, created_b = project.add_image_bytes(data, "second-name.png")
    assert created_a and not created_b and a.id == b.id
    assert b.file_name == "first.png"  # the first name stays; the content is the identity
    path = project.image_file(a.id)
    assert path == project.root / "images" / a.sha256[:2] / f"{a.sha256}.png"
    assert path.read_bytes() == data
    other, created = project.add_image_bytes(png_bytes(seed=1), "first.png")
    assert created and other.id != a.id and other.file_name == "first.png"
    assert [i.file_name for i in project.list_images()] == ["first.png", "first.png"]
    assert len(project_files(project)) == 2
    assert (a.width, a.height, a.status) == (32, 24, "new")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("/abs/path/x.png", "x.png"),
        ("C:\\Users\\me\\y.png", "y.png"),
        ("name with spaces 'and' \"quotes\".png", "name with spaces 'and' \"quotes\".png"),
    ],
)
def test_file_names_are_metadata(project, given, kept):
    image, _ = project.add_image_bytes(png_bytes(), given)
    assert image.file_name == kept
    assert project.image_file(image.id).parent.parent == project.images_dir


@pytest.mark.parametrize("name", ["a\x00.png", "..", "dir/", "", "tab\there.png"])
def test_bad_file_names_rejected(project, name):
    with pytest.raises(InvalidInput, match="file name"):
        project.add_image_bytes(png_bytes(), name)
    assert project.list_images() == [] and project_files(project) == []


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("text", "not an image"),
        ("truncated_jpeg", "truncated"),
        ("bomb", "decompression bomb"),
    ],
)
def test_bad_image_files_rejected(project, tmp_path, kind, match):
    data = {
        "text": b"hello, I am a text file\n",
        "truncated_jpeg": jpeg_bytes()[:400],
        "bomb": bomb_png(),
    }[kind]
    path = tmp_path / ("x.jpg" if kind == "truncated_jpeg" else "x.png")
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match=match):
        project.add_image_file(path)
    assert project.list_images() == [] and project_files(project) == []
    report = project.add_paths([path])
    assert report.added == [] and [p for p, _ in report.skipped] == [str(path)]


def test_add_paths(project, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(png_bytes(seed=1))
    (src / "sub" / "b.jpg").write_bytes(jpeg_bytes(seed=2))
    (src / "sub" / "dup.png").write_bytes(png_bytes(seed=1))
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG nope")
    (src / ".hidden.png").write_bytes(png_bytes(seed=3))
    report = project.add_paths([src, tmp_path / "missing.png"])
    assert sorted(r.file_name for r in report.added) == ["a.png", "b.jpg"]
    assert [r.file_name for r in report.existing] == ["a.png"]
    skipped = dict(report.skipped)
    assert set(skipped) == {
        str(src / "notes.txt"),
        str(src / "broken.png"),
        str(tmp_path / "missing.png"),
    }
    assert "suffix" in skipped[str(src / "notes.txt")]
    assert "no such file" in skipped[str(tmp_path / "missing.png")]
    jpg = next(r for r in report.added if r.file_name == "b.jpg")
    assert project.image_file(jpg.id).suffix == ".jpg"


def test_status(project):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    assert project.set_status(image.id, "done").status == "done"
    assert [i.id for i in project.list_images("done")] == [image.id]
    assert project.list_images("new") == []
    with pytest.raises(InvalidInput, match="status must be one of"):
        project.set_status(image.id, "finished")
    with pytest.raises(NotFound):
        project.set_status(999, "done")


# ----------------------------------------------------------------------------- masks


def test_mask_crud_and_versions(project):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    project.add_annotator("alice")
    rle = box_rle(24, 32, 2, 6, 3, 11)
    mask = project.add_mask(
        image.id, segmentation=rle, annotator="alice", predicted_iou=0.9, stability_score=0.95,
        point_coords=[[5, 4]], prompts={"points": [[5, 4]], "labels": [1]}, elapsed_ms=4200,
    )  # fmt: skip
    assert (mask.version, mask.area, mask.bbox) == (1, 32, [3.0, 2.0, 8.0, 4.0])
    assert mask.segmentation == rle and mask.annotator == "alice" and mask.source == "manual"
    sa1b = mask.to_sa1b()
    assert {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
            "point_coords", "crop_box", "source", "label", "annotator", "version"} <= set(sa1b)  # fmt: skip
    assert json.loads(json.dumps(sa1b)) == sa1b
    edited = project.update_mask(
        mask.id, version=1, segmentation=box_rle(24, 32, 2, 8, 3, 11), label="cat",
        annotator="alice",
    )  # fmt: skip
    assert (edited.version, edited.area, edited.label) == (2, 48, "cat")
    with pytest.raises(VersionConflict, match="version 2, not 1") as err:
        project.update_mask(mask.id, version=1, label="dog")
    assert err.value.current == 2
    assert project.get_mask(mask.id).label == "cat"  # the stale edit changed nothing
    with pytest.raises(VersionConflict):
        project.delete_mask(mask.id, version=1)
    assert [m.id for m in project.list_masks(image.id)] == [mask.id]
    assert project.list_images()[0].num_masks == 1
    project.delete_mask(mask.id, version=2, annotator="alice")
    assert project.list_masks(image.id) == []
    with pytest.raises(NotFound):
        project.get_mask(mask.id)
    with pytest.raises(NotFound):
        project.update_mask(mask.id, version=2, label="x")
    kinds = [(e.kind, e.mask_id) for e in project.list_events()]
    assert kinds == [("accept", mask.id), ("edit", mask.id), ("delete", mask.id)]
    deleted = project.list_events(kind="delete")[0].payload["mask"]
    assert deleted["segmentation"] == edited.segmentation and deleted["label"] == "cat"


def test_mask_input_forms_are_canonical(project):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    m = np.zeros((24, 32), dtype=bool)
    m[5:9, 7:20] = True
    from_array = project.add_mask(image.id, segmentation=m)
    poly = [[7, 5, 20, 5, 20, 9, 7, 9]]
    from_polygon = project.add_mask(image.id, segmentation=poly)
    assert from_array.segmentation == from_polygon.segmentation == encode_coco_rle(m)
    # the same mask with an empty run inside, as another tool might encode it
    odd = uncompressed_to_coco_rle({"size": [2, 2], "counts": [1, 0, 1, 2]})
    tiny, _ = project.add_image_bytes(png_bytes(h=2, w=2), "tiny.png")
    stored = project.add_mask(tiny.id, segmentation=odd).segmentation
    assert odd["counts"] != stored["counts"]
    assert stored == encode_coco_rle(np.array([[False, True], [False, True]]))
    assert np.array_equal(decode_coco_rle(from_array.segmentation), m)


@pytest.mark.parametrize(
    ("segmentation", "match"),
    [
        (box_rle(10, 10, 1, 3, 1, 3), "does not match the image"),
        ({"size": [24, 32], "counts": "not-rle!!"}, "segmentation"),
        ({"size": [24, 32], "counts": "0"}, "sum to"),
        (np.zeros((24, 32), dtype=bool), "empty"),
        ("a string", "segmentation"),
    ],
)
def test_bad_masks_rejected(project, segmentation, match):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    with pytest.raises(InvalidInput, match=match):
        project.add_mask(image.id, segmentation=segmentation)
    assert project.list_masks(image.id) == [] and project.list_events() == []


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("source", "robot", "source must be one of"),
        ("stage", 4, "stage must be one of"),
        ("predicted_iou", float("nan"), "finite"),
        ("point_coords", [[1, 2, 3]], r"\[x, y\]"),
        ("prompts", {"x": float("inf")}, "plain JSON"),
        ("elapsed_ms", -5, "elapsed_ms"),
        ("annotator", "nobody", "no annotator named"),
        ("model_version", 77, "no model version"),
    ],
)
def test_bad_mask_fields_rejected(project, field, value, match):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    with pytest.raises((InvalidInput, NotFound), match=match):
        project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 3, 1, 3), **{field: value})
    assert project.list_masks(image.id) == []


LABELS = [
    "'; DROP TABLE masks; --",
    "Robert'); DELETE FROM images WHERE ('1'='1",
    'double "quotes" and \\backslash\\',
    "100% _like_ [pattern] *",
    "ünïcødé 猫 🐱",
    "$1 :name ? %s {x}",
]


def test_labels_stored_verbatim(project):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    for label in LABELS:
        project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 5, 1, 5), label=label)
    assert [m.label for m in project.list_masks(image.id)] == LABELS
    assert len(project.list_images()) == 1
    annotator, _ = project.add_annotator(LABELS[0])
    assert project.get_annotator(LABELS[0]) == annotator


def test_concurrent_writers(tmp_path, project, db_url):
    """Several connections at once: one image per content, one winner per mask version, every
    accepted mask stored."""
    data = png_bytes(seed=9)
    others = [Project.open(project.root, db_url=db_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            added = list(pool.map(lambda p: p.add_image_bytes(data, "same.png"), others))
        assert len({r.id for r, _ in added}) == 1 and sum(c for _, c in added) == 1
        image = added[0][0]
        mask = project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 5, 1, 5))

        def edit(args):
            p, i = args
            try:
                return p.update_mask(mask.id, version=1, label=f"edit {i}").label
            except VersionConflict:
                return None

        with ThreadPoolExecutor(4) as pool:
            labels = list(pool.map(edit, [(p, i) for i, p in enumerate(others)]))
        winners = [x for x in labels if x is not None]
        assert len(winners) == 1 and project.get_mask(mask.id).label == winners[0]
        assert project.get_mask(mask.id).version == 2

        def accept(args):
            p, i = args
            rle = box_rle(24, 32, i, i + 2, 0, 3 + i)
            return [p.add_mask(image.id, segmentation=rle).id for _ in range(5)]

        with ThreadPoolExecutor(4) as pool:
            ids = [
                x
                for batch in pool.map(accept, [(p, i) for i, p in enumerate(others)])
                for x in batch
            ]
        assert len(set(ids)) == 20
        assert {m.id for m in project.list_masks(image.id)} == {mask.id, *ids}
    finally:
        for p in others:
            p.close()


# ----------------------------------------------------------------------------- leases


def test_leases(project, clock):
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    project.add_annotator("alice")
    project.add_annotator("bob")
    leased = project.lease_image(image.id, "alice", ttl_s=60)
    assert leased.lease_holder == "alice" and leased.status == "in_progress"
    with pytest.raises(LeaseConflict, match="leased to 'alice'") as err:
        project.lease_image(image.id, "bob", ttl_s=60)
    assert err.value.holder == "alice"
    with pytest.raises(LeaseConflict):
        project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 5, 1, 5), annotator="bob")
    mask = project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 5, 1, 5), annotator="alice")
    with pytest.raises(LeaseConflict):
        project.update_mask(mask.id, version=1, label="x", annotator="bob")
    with pytest.raises(LeaseConflict):
        project.release_image(image.id, "bob")
    clock.advance(30)
    project.lease_image(image.id, "alice", ttl_s=60)  # renewal: now until +90 s
    clock.advance(59)
    with pytest.raises(LeaseConflict):
        project.lease_image(image.id, "bob", ttl_s=60)
    clock.advance(2)  # alice's lease has expired
    assert project.get_image(image.id).lease_holder is None
    assert project.lease_image(image.id, "bob", ttl_s=10).lease_holder == "bob"
    project.release_image(image.id, "bob")
    assert project.get_image(image.id).lease_holder is None
    assert project.lease_image(image.id, "alice", ttl_s=0).lease_holder is None  # ttl 0: expired
    assert project.lease_image(image.id, "bob", ttl_s=5).lease_holder == "bob"
    with pytest.raises(InvalidInput, match="ttl_s"):
        project.lease_image(image.id, "bob", ttl_s=-1)
    for bad_id in (999, "1", True):
        with pytest.raises(NotFound, match="no image"):
            project.lease_image(bad_id, "bob", ttl_s=5)


# ----------------------------------------------------------------------------- annotators, models


def test_annotators_and_tokens(project):
    alice, token = project.add_annotator("alice")
    assert project.annotator_for_token(token) == alice
    assert project.annotator_for_token(token + "x") is None
    assert project.annotator_for_token("") is None
    with project.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM annotators")).scalar()
    assert stored != token and token not in stored and len(stored) == 64
    with pytest.raises(InvalidInput, match="exists"):
        project.add_annotator("alice")
    with pytest.raises(InvalidInput, match="non-empty"):
        project.add_annotator("  ")
    assert [a.name for a in project.list_annotators()] == ["alice"]


def test_model_versions(project):
    first = project.current_model()
    v2 = project.register_model("finetuned", "sha256:" + "1" * 64, "/x/ft.safetensors")
    assert project.current_model() == v2 and v2.id != first.id
    assert project.register_model("again", "sha256:" + "1" * 64) == v2  # idempotent
    image, _ = project.add_image_bytes(png_bytes(), "a.png")
    mask = project.add_mask(image.id, segmentation=box_rle(24, 32, 1, 5, 1, 5), model_version=v2)
    assert mask.model_version_id == v2.id


# ----------------------------------------------------------------------------- stats


def test_stats_recomputable_from_events(project):
    images = [project.add_image_bytes(png_bytes(seed=i), f"{i}.png")[0] for i in range(3)]
    for name in ("alice", "bob"):
        project.add_annotator(name)
    plan = [  # (annotator, image, stage, clicks, elapsed_ms)
        ("alice", 0, 1, 3, 30_000),
        ("alice", 0, 1, 2, 20_000),
        ("alice", 1, 1, 1, 10_000),
        ("bob", 2, 1, 4, 14_000),
        ("bob", 2, 2, 1, None),
    ]
    for who, i, stage, clicks, elapsed in plan:
        for _ in range(clicks):
            project.record_event("prompt", image_id=images[i].id, annotator=who, stage=stage)
        project.add_mask(
            images[i].id, segmentation=box_rle(24, 32, 1, 4 + clicks, 1, 6), annotator=who,
            stage=stage, source="manual" if stage == 1 else "prefill", elapsed_ms=elapsed,
        )  # fmt: skip
    project.set_status(images[0].id, "done")
    stats = project.stats()
    assert stats["images"] == {"total": 3, "new": 2, "in_progress": 0, "done": 1, "skipped": 0}
    assert stats["masks"] == 5
    groups = {(g["stage"], g["annotator"]): g for g in stats["groups"]}
    assert set(groups) == {(1, "alice"), (1, "bob"), (2, "bob")}
    events = project.list_events()
    masks = [m for im in images for m in project.list_masks(im.id)]
    for (stage, who), g in groups.items():
        accepts = [
            e for e in events if e.kind == "accept" and (e.stage, e.annotator) == (stage, who)
        ]
        prompts = [
            e for e in events if e.kind == "prompt" and (e.stage, e.annotator) == (stage, who)
        ]
        mine = [m for m in masks if (m.stage, m.annotator) == (stage, who)]
        timed = [e.elapsed_ms for e in accepts if e.elapsed_ms is not None]
        assert g["masks"] == len(mine) and g["accepted"] == len(accepts)
        assert g["clicks_per_mask"] == pytest.approx(len(prompts) / len(accepts))
        assert g["masks_per_image"] == pytest.approx(len(mine) / len({m.image_id for m in mine}))
        if timed:
            assert g["seconds_per_mask"] == pytest.approx(sum(timed) / 1000 / len(timed))
        else:
            assert g["seconds_per_mask"] is None
    assert groups[(1, "alice")]["seconds_per_mask"] == pytest.approx(20.0)
    assert groups[(1, "alice")]["images_done"] == 1 and groups[(1, "bob")]["images_done"] == 0
    with pytest.raises(InvalidInput, match="event kind"):
        project.record_event("click", image_id=images[0].id)


# ----------------------------------------------------------------------------- export, import


def ring_mask(h: int = 24, w: int = 32) -> np.ndarray:
    """A square ring: a mask with a hole."""
    m = np.zeros((h, w), dtype=bool)
    m[4:16, 6:20] = True
    m[8:12, 10:16] = False
    return m


def fill_project(p: Project) -> None:
    p.add_annotator("alice")
    a, _ = p.add_image_bytes(png_bytes(seed=1), "../cats/a.png")
    b, _ = p.add_image_bytes(jpeg_bytes(seed=2), "b.jpg")
    p.add_image_bytes(png_bytes(seed=3), "empty.png")  # no masks
    gone = p.add_mask(a.id, segmentation=box_rle(24, 32, 0, 2, 0, 2))
    p.delete_mask(gone.id)  # leaves a gap in the mask ids
    p.add_mask(
        a.id, segmentation=encode_coco_rle(ring_mask()), annotator="alice", label="ring",
        predicted_iou=0.875, stability_score=0.9375, point_coords=[[6.5, 4.25]],
        prompts={"points": [[6.5, 4.25]]}, elapsed_ms=1000,
    )  # fmt: skip
    p.add_mask(a.id, segmentation=box_rle(24, 32, 18, 22, 2, 30), label=LABELS[0])
    p.add_mask(b.id, segmentation=box_rle(64, 64, 10, 40, 5, 50), label="object", source="auto",
               stage=3, crop_box=[0, 0, 32, 32])  # fmt: skip
    p.add_mask(b.id, segmentation=box_rle(64, 64, 0, 64, 0, 1))


def tree_bytes(root) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
    }


@pytest.mark.parametrize("fmt", ["sa1b", "coco"])
def test_export_import_export_is_byte_stable(tmp_path, project, db_url, request, fmt):
    fill_project(project)
    first = project.export(tmp_path / "out1", format=fmt, polygons=True)
    assert (first["images"], first["masks"]) == (3, 4)
    with contextlib.ExitStack() as stack:
        url2 = None
        if db_url is not None:  # a second fresh database on the same server
            server = request.getfixturevalue("postgres_server")
            url2 = server.create_database("segany_copy")
            stack.callback(server.drop_database, "segany_copy")
        with Project.init(tmp_path / "copy", db_url=url2) as copy:
            report = copy.import_(tmp_path / "out1" / ("instances.json" if fmt == "coco" else ""))
            assert report == {"images_added": 3, "images_existing": 0, "masks_added": 4,
                              "masks_existing": 0}  # fmt: skip
            again = copy.import_(tmp_path / "out1" / ("instances.json" if fmt == "coco" else ""))
            assert again["masks_added"] == 0 and again["masks_existing"] == 4
            copy.export(tmp_path / "out2", format=fmt, polygons=True)
            if fmt == "coco":  # COCO keeps labels and sources; SA-1B has neither
                got = sorted((m.label or "", m.source) for i in copy.list_images()
                             for m in copy.list_masks(i.id))  # fmt: skip
                assert got == sorted([("", "manual"), ("object", "auto"), ("ring", "manual"),
                                      (LABELS[0], "manual")])  # fmt: skip
    one, two = tree_bytes(tmp_path / "out1"), tree_bytes(tmp_path / "out2")
    assert sorted(one) == sorted(two) and one == two


def test_sa1b_export_is_official(tmp_path, project):
    from segany.data.datasets import SA1BFolder
    from segany.formats import SA1B_ANNOTATION_KEYS, read_sa1b_json

    fill_project(project)
    project.export(tmp_path / "out", format="sa1b")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["sa_1.json", "sa_1.png", "sa_2.jpg", "sa_2.json", "sa_3.json", "sa_3.png"]
    record = read_sa1b_json(tmp_path / "out" / "sa_1.json")
    assert record["image"] == {"image_id": 1, "width": 32, "height": 24, "file_name": "sa_1.png"}
    assert [a["id"] for a in record["annotations"]] == [1, 2]
    assert all(set(a) == set(SA1B_ANNOTATION_KEYS) for a in record["annotations"])
    ring = record["annotations"][0]
    assert np.array_equal(decode_coco_rle(ring["segmentation"]), ring_mask())
    assert (ring["predicted_iou"], ring["point_coords"]) == (0.875, [[6.5, 4.25]])
    assert ring["crop_box"] == [0, 0, 32, 24]
    sample = SA1BFolder(tmp_path / "out")[0]
    assert sample.masks.shape == (2, 24, 32)
    assert (tmp_path / "out" / "sa_1.png").read_bytes() == project.image_file(1).read_bytes()


def test_polygon_export_keeps_holes(tmp_path, project):
    pytest.importorskip("cv2")
    from pycocotools.coco import COCO

    fill_project(project)
    report = project.export(tmp_path / "out", format="coco", polygons=True)
    assert report["polygon_masks"] == 3 and report["rle_masks"] == 1  # the ring
    masks = {m.label: decode_coco_rle(m.segmentation) for i in project.list_images()
             for m in project.list_masks(i.id)}  # fmt: skip
    for name in ("instances.json", "instances_polygons.json"):
        coco = COCO(str(tmp_path / "out" / name))
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) == 4
        for ann in anns:
            assert ann["iscrowd"] == 0
            assert np.array_equal(coco.annToMask(ann).astype(bool), masks[ann["label"]])
            assert ann["area"] == int(masks[ann["label"]].sum())
        ring = next(a for a in anns if a["label"] == "ring")
        assert isinstance(ring["segmentation"], dict)  # RLE: polygons would fill the hole
        if name == "instances_polygons.json":
            box = next(a for a in anns if a["label"] == LABELS[0])
            assert isinstance(box["segmentation"], list)
    images = json.loads((tmp_path / "out" / "instances.json").read_text())["images"]
    assert [i["original_file_name"] for i in images] == ["a.png", "b.jpg", "empty.png"]
    assert (tmp_path / "out" / "images" / "000002.jpg").is_file()


def test_export_refuses_nonempty_folder(tmp_path, project):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not an empty folder"):
        project.export(tmp_path / "out")
    with pytest.raises(InvalidInput, match="format must be one of"):
        project.export(tmp_path / "new", format="yolo")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_import_errors_import_nothing(tmp_path, project):
    fill_project(project)
    project.export(tmp_path / "out", format="coco")
    data = json.loads((tmp_path / "out" / "instances.json").read_text())
    bad = dict(data, images=[*data["images"], {"id": 99, "file_name": "../../etc/x.png",
                                               "width": 5, "height": 5}])  # fmt: skip
    (tmp_path / "out" / "bad.json").write_text(json.dumps(bad))
    wrong = json.loads(json.dumps(data))
    wrong["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": "01"}
    (tmp_path / "out" / "wrong.json").write_text(json.dumps(wrong))
    with Project.init(tmp_path / "fresh") as fresh:
        with pytest.raises(InvalidInput, match="not found"):
            fresh.import_(tmp_path / "out" / "bad.json")
        with pytest.raises(InvalidInput, match="does not match|sum to"):
            fresh.import_(tmp_path / "out" / "wrong.json")
        with pytest.raises(InvalidInput, match="no SA-1B JSON"):
            fresh.import_(tmp_path / "out" / "images")
        assert fresh.list_images() == []
