"""``segany project``: init, add, export, import and stats through ``segany.cli.main.main``,
their output and exit codes, on SQLite and on PostgreSQL (the ``postgres_url`` fixture)."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from segany.cli.main import main  # noqa: E402
from segany.engine.store import Project  # noqa: E402
from segany.formats import encode_coco_rle  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def db_args(request):
    """``[]`` (the embedded SQLite file) or ``["--db", URL]`` of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield []
        return
    try:
        base = request.getfixturevalue("postgres_url")
    except pytest.FixtureLookupError:
        pytest.skip("the postgres_url fixture (tests/conftest.py) is not available")
    name = f"c_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield ["--db", make_url(base).set(database=name).render_as_string(hide_password=False)]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_png(path, seed: int = 0, h: int = 20, w: int = 30) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_project_workflow(tmp_path, capsys, db_args):
    proj = tmp_path / "proj"
    code, out, err = run(capsys, "project", "init", proj, *db_args)
    assert code == 0 and out.strip() == str(proj) and "created project" in err
    src = tmp_path / "src"
    src.mkdir()
    write_png(src / "a.png", 0)
    write_png(src / "b.png", 1)
    code, out, _ = run(capsys, "project", "add", proj, src, *db_args)
    assert code == 0
    assert out.splitlines() == ["added 1 a.png 30x20", "added 2 b.png 30x20"]
    code, out, _ = run(capsys, "project", "add", proj, src / "a.png", *db_args)
    assert code == 0 and out.splitlines() == ["exists 1 a.png"]

    url = db_args[1] if db_args else None
    with Project.open(proj, db_url=url) as p:
        p.add_annotator("alice")
        m = np.zeros((20, 30), dtype=bool)
        m[2:9, 4:12] = True
        p.record_event("prompt", image_id=1, annotator="alice")
        p.record_event("prompt", image_id=1, annotator="alice")
        p.add_mask(1, segmentation=encode_coco_rle(m), annotator="alice", elapsed_ms=12_500)
        p.set_status(1, "done")
        expected = {**p.stats(), "embeddings": p.embedding_progress()}

    code, out, _ = run(capsys, "project", "stats", proj, "--json", *db_args)
    assert code == 0 and json.loads(out) == expected
    code, out, _ = run(capsys, "project", "stats", proj, *db_args)
    assert code == 0
    assert "images: 2 (new 1, in progress 0, done 1, skipped 0); masks: 1" in out
    assert "embeddings: not known yet for model segany_tiny (2 images;" in out
    [row] = [line.split() for line in out.splitlines() if "alice" in line]
    assert row == ["1", "alice", "1", "1", "1", "12.5", "1.00", "2.00"]

    for fmt in ("sa1b", "coco"):
        out_dir = tmp_path / f"out_{fmt}"
        code, out, err = run(
            capsys, "project", "export", proj, "--out", out_dir, "--format", fmt, "--polygons",
            *db_args,
        )  # fmt: skip
        assert code == 0 and out.strip() == str(out_dir)
        assert "exported 2 images, 1 masks" in err and "1 polygons, 0 RLE" in err
        assert (out_dir / "instances_polygons.json").is_file()
    assert (tmp_path / "out_sa1b" / "sa_1.json").is_file()
    assert (tmp_path / "out_coco" / "instances.json").is_file()

    fresh = tmp_path / "fresh"
    assert run(capsys, "project", "init", fresh)[0] == 0
    code, out, _ = run(capsys, "project", "import", fresh, tmp_path / "out_coco" / "instances.json")
    assert code == 0 and "images: 2 added" in out and "masks: 1 added" in out
    code, out, _ = run(capsys, "project", "import", fresh, tmp_path / "out_sa1b")
    assert code == 0 and "images: 0 added, 2 already present" in out
    assert "masks: 0 added, 1 already present" in out


def test_add_exit_codes(tmp_path, capsys):
    proj = tmp_path / "proj"
    assert run(capsys, "project", "init", proj)[0] == 0
    write_png(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not an image")
    truncated = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        truncated, "JPEG"
    )
    (tmp_path / "cut.jpg").write_bytes(truncated.getvalue()[:300])
    code, out, err = run(
        capsys, "project", "add", proj, tmp_path / "text.png", tmp_path / "cut.jpg"
    )
    assert code == 2 and out == ""
    assert "not an image" in err and "truncated" in err and "no image was added" in err
    code, out, err = run(capsys, "project", "add", proj, tmp_path / "ok.png", tmp_path / "text.png")
    assert code == 4 and out.startswith("added 1 ok.png") and "1 skipped" in err
    with Project.open(proj) as p:
        assert [i.file_name for i in p.list_images()] == ["ok.png"]


def test_annotator_token(tmp_path, capsys):
    proj = tmp_path / "proj"
    assert run(capsys, "project", "init", proj)[0] == 0
    code, out, err = run(capsys, "project", "annotator", proj, "ana")
    assert code == 0 and "added annotator ana" in err
    token = out.strip()
    with Project.open(proj) as p:
        assert p.annotator_for_token(token).name == "ana"
    code, out, err = run(capsys, "project", "annotator", proj, "ana")
    assert code == 2 and out == "" and "exists" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["project"], "needs an action"),
        (["project", "stats", "{tmp}/nothing"], "not a segany project"),
        (["project", "add", "{tmp}/nothing", "x.png"], "not a segany project"),
        (["project", "init", "{tmp}/db", "--db", "mysql://u@h/d"], "unsupported database"),
        (["project", "init", "{tmp}/proj"], "already a segany project"),
        (["project", "export", "{tmp}/proj", "--out", "{tmp}/full"], "not an empty folder"),
        (
            ["project", "export", "{tmp}/proj", "--out", "{tmp}/o", "--format", "yolo"],
            "invalid choice",
        ),
        (["project", "import", "{tmp}/proj", "{tmp}/full/junk.json"], "not a readable JSON"),
        (["project", "import", "{tmp}/proj", "{tmp}/missing"], "no such file"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    assert run(capsys, "project", "init", tmp_path / "proj")[0] == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "junk.json").write_text("{not json")
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and message in err
