"""`segany engine auto` in-process: presets, SA-1B tar shards and their index (readable by
segany.formats and pycocotools), byte-identical re-runs, resume after an interrupted shard,
import into a project as automatic masks, and the command's exit codes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segany.cli import engine_cmd
from segany.cli.auto_cmd import generator_defaults
from segany.cli.main import main
from segany.data.sample import sample_image
from segany.engine.stages import (
    INDEX_FILE,
    PRESETS,
    GeneratorSpec,
    ImageResult,
    extract_shard,
    import_shards,
    list_inputs,
    read_and_segment,
    run_auto,
)
from segany.formats import read_sa1b_json, sa1b_masks
from segany.io.files import sha256_file

#: Fast settings: the bundled model on a 4x4 grid, on small images.
SPEC = GeneratorSpec.from_preset(
    PRESETS["default"], model="segany_tiny", device="cpu", precision="fp32", points_per_side=4
)
FAST = ["--preset", "default", "--points-per-side", "4", "--device", "cpu", "--quiet"]


def write_images(folder: Path, count: int = 5) -> list[Path]:
    """``count`` small sample scenes (160x120 PNG), one of them in a subfolder."""
    paths = []
    for i in range(count):
        image, _ = sample_image(160, 120, seed=i)
        path = folder / ("sub" if i == 2 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    write_images(folder)
    return folder


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("sa_*.tar"))} | {
        INDEX_FILE: (out / INDEX_FILE).read_bytes()
    }


def test_presets_are_the_paper_and_the_generator_defaults():
    sa1b = PRESETS["sa1b"]
    assert (sa1b.points_per_side, sa1b.crop_n_layers, sa1b.crop_n_points_downscale_factor) == (
        32,
        2,
        2,
    )
    assert sa1b.pred_iou_thresh == 0.88 and sa1b.stability_score_thresh == 0.95
    assert sa1b.max_area_fraction == 0.95 and sa1b.min_mask_region_area == 100
    from segany.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    # 32x32 on the full image, 16x16 on each of 2x2 crops, 8x8 on each of 4x4 crops
    grids = build_all_layer_point_grids(32, sa1b.crop_n_layers, sa1b.crop_n_points_downscale_factor)
    assert [len(g) for g in grids] == [32 * 32, 16 * 16, 8 * 8]
    _, layers = generate_crop_boxes((1500, 2250), sa1b.crop_n_layers, 512 / 1500)
    assert [layers.count(i) for i in range(3)] == [1, 4, 16]
    defaults = generator_defaults()
    for key, value in PRESETS["default"].generator_kwargs().items():
        assert defaults[key] == value, key
    assert set(engine_cmd.PRESET_NAMES) == set(PRESETS)


def test_inputs_folder_recursive_and_project(tmp_path, images):
    (images / ".hidden.png").write_bytes(b"x")
    (images / "notes.txt").write_text("not an image")
    assert [im.name for im in list_inputs(images)] == [
        "img0.png",
        "img1.png",
        "img3.png",
        "img4.png",
        "sub/img2.png",
    ]
    with pytest.raises(ValueError, match="not a folder"):
        list_inputs(images / "img0.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_inputs(tmp_path / "empty")


def test_shards_index_and_json_readable(tmp_path, images):
    out = tmp_path / "out"
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    assert report["images"] == report["done"] == 5 and report["failed"] == []
    assert report["shards"] == 3 and report["mode"] == "in-process"
    assert report["masks"] > 0 and report["images_per_hour"] > 0
    assert json.loads((out / "report.json").read_text())["masks"] == report["masks"]
    index = json.loads((out / INDEX_FILE).read_text())
    assert [s["file"] for s in index["shards"]] == [
        "sa_000000.tar",
        "sa_000001.tar",
        "sa_000002.tar",
    ]
    names = [im["name"] for s in index["shards"] for im in s["images"]]
    assert names == [im.name for im in list_inputs(images)]
    total = 0
    for entry in index["shards"]:
        tar_path = out / entry["file"]
        assert sha256_file(tar_path) == entry["sha256"]
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        dest = tmp_path / entry["file"]
        dest.mkdir()
        extract_shard(tar_path, dest)
        for im in entry["images"]:
            source = images / im["name"]
            assert (dest / im["file"]).read_bytes() == source.read_bytes()
            record = read_sa1b_json(dest / f"sa_{im['id']}.json")
            assert record["image"] == {
                "image_id": im["id"], "width": 160, "height": 120, "file_name": im["file"],
            }  # fmt: skip
            assert len(record["annotations"]) == im["masks"]
            masks = sa1b_masks(record)
            for ann, mask in zip(record["annotations"], masks, strict=True):
                rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
                decoded = mask_utils.decode(rle).astype(bool)
                assert decoded.shape == (120, 160)
                assert np.array_equal(decoded, mask) and decoded.sum() == ann["area"] > 0
            total += im["masks"]
        assert entry["masks"] == sum(im["masks"] for im in entry["images"])
    assert total == report["masks"]
    # a finished run loads no model and redoes nothing
    again = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    assert again["done"] == 0 and again["skipped"] == 5


def test_same_input_gives_the_same_bytes(tmp_path, images):
    run_auto(images, tmp_path / "a", spec=SPEC, shard_size=3, progress=False)
    run_auto(images, tmp_path / "b", spec=SPEC, shard_size=3, progress=False)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def _interrupted(images: Path, after: int):
    """Real results for the first ``after`` images, then the run dies."""
    generator = SPEC.build()
    for k, im in enumerate(list_inputs(images)):
        if k == after:
            raise KeyboardInterrupt
        yield read_and_segment(generator, im.path)


def test_resume_after_an_interrupted_shard(tmp_path, images):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_auto(images, ref, spec=SPEC, shard_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):  # dies inside the second shard
        run_auto(
            images, out, spec=SPEC, shard_size=2, progress=False, results=_interrupted(images, 3)
        )
    index = json.loads((out / INDEX_FILE).read_text())
    assert [s["file"] for s in index["shards"]] == ["sa_000000.tar"]
    # what a kill leaves: a half-written shard under its temporary name, and a shard renamed
    # before the index had its entry
    (out / ".sa_000001.tar.999.0123456789ab.tmp").write_bytes(b"half a tar")
    (out / ".sa_000001.tar.xyz.tmp").mkdir()
    (out / "sa_000002.tar").write_bytes((ref / "sa_000002.tar").read_bytes())
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    assert report["skipped"] == 2 and report["done"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert shard_bytes(out) == shard_bytes(ref)
    names = [
        im["name"]
        for s in json.loads((out / INDEX_FILE).read_text())["shards"]
        for im in s["images"]
    ]
    assert len(names) == len(set(names)) == 5
    # a shard damaged after the fact is redone, with the shards after it
    (out / "sa_000001.tar").write_bytes(b"damaged")
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    assert report["done"] == 3 and shard_bytes(out) == shard_bytes(ref)


def test_other_settings_are_refused(tmp_path, images):
    out = tmp_path / "out"
    run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    other = GeneratorSpec.from_preset(PRESETS["default"], model="segany_tiny", points_per_side=5)
    with pytest.raises(ValueError, match="other settings"):
        run_auto(images, out, spec=other, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_auto(images, out, spec=SPEC, shard_size=3, progress=False)
    with pytest.raises(ValueError, match="shard size"):
        run_auto(images, out, spec=SPEC, shard_size=0, progress=False)


def test_unreadable_image_is_skipped_and_retried(tmp_path, images):
    (images / "broken.png").write_bytes(b"not an image")
    results = [ImageResult(error="cannot read broken.png")] + [
        read_and_segment(SPEC.build(), im.path) for im in list_inputs(images)[1:]
    ]
    out = tmp_path / "out"
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False, results=results)
    assert report["failed"] == ["broken.png"] and report["done"] == 5
    image, _ = sample_image(160, 120, seed=9)
    Image.fromarray(image).save(images / "broken.png")
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    assert report["done"] == 1 and report["skipped"] == 5
    ids = [
        im["id"] for s in json.loads((out / INDEX_FILE).read_text())["shards"] for im in s["images"]
    ]
    assert len(ids) == len(set(ids)) == 6


def test_import_into_project_as_auto_masks(tmp_path, images):
    from segany.engine.store import InvalidInput, Project

    out = tmp_path / "out"
    report = run_auto(images, out, spec=SPEC, shard_size=2, progress=False)
    with Project.init(tmp_path / "project") as project:
        result = import_shards(project, out)
        assert result["images_added"] == 5 and result["masks_added"] == report["masks"]
        masks = [m for im in project.list_images() for m in project.list_masks(im.id)]
        assert len(masks) == report["masks"]
        assert {(m.source, m.stage) for m in masks} == {("auto", 3)}
        assert all(m.predicted_iou is not None and m.point_coords for m in masks)
        again = import_shards(project, out)
        assert again["masks_added"] == 0 and again["masks_existing"] == report["masks"]
        with pytest.raises(InvalidInput, match="source"):
            project.import_(out, source="robot")
    # a project folder is an input too: its images, already imported, give the same masks
    out2 = tmp_path / "out2"
    report2 = run_auto(tmp_path / "project", out2, spec=SPEC, shard_size=10, progress=False)
    assert report2["done"] == 5 and report2["masks"] == report["masks"]


def test_cli_writes_shards_and_imports(tmp_path, images, capsys):
    from segany.engine.store import Project

    Project.init(tmp_path / "project").close()
    out = tmp_path / "out"
    code = main(
        ["engine", "auto", str(images), "--out", str(out), "--shard-size", "4", *FAST,
         "--into-project", str(tmp_path / "project")]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["done"] == 5 and report["shards"] == 2
    with Project.open(tmp_path / "project") as project:
        assert len(project.list_images()) == 5
        masks = [m for im in project.list_images() for m in project.list_masks(im.id)]
        assert len(masks) == report["masks"] and {m.source for m in masks} == {"auto"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "not a folder"),
        (["{empty}"], "no image files"),
        (["{images}", "--preset", "paper"], "--preset"),
        (["{images}", "--shard-size", "0"], "--shard-size"),
        (["{images}", "--workers", "0"], "--workers"),
        (["{images}", "--gpus-per-worker", "1"], "--gpus-per-worker"),
        (["{images}", "--threads", "0"], "--threads"),
        (["{images}", "--into-project", "{empty}"], "not a segany project"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, images, capsys, args, message):
    (tmp_path / "empty").mkdir()
    where = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "images": images}
    argv = [a.format(**where) for a in args]
    code = main(["engine", "auto", argv[0], "--out", str(tmp_path / "out"), *FAST, *argv[1:]])
    assert code == 2
    assert message in capsys.readouterr().err


def test_extract_refuses_members_outside_the_folder(tmp_path):
    import io

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(ValueError, match="unexpected member"):
        extract_shard(bad, tmp_path / "dest")
    assert not (tmp_path / "evil.json").exists()
