"""Datasets: SA-1B folders, COCO instances, procedural scenes, open_dataset specs and freezing
a dataset to disk (tiny images, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.data.datasets import (
    CocoInstances,
    SA1BFolder,
    Sample,
    SceneSamples,
    open_dataset,
    write_sa1b_dataset,
)
from segany.data.scenes import ProceduralScenes, SceneConfig
from segany.formats import encode_coco_rle, encode_uncompressed_rle, polygons_to_mask

SMALL = SceneConfig(height=48, width=64)


@pytest.fixture(scope="module")
def scenes():
    return SceneSamples(ProceduralScenes(3, seed=5, config=SMALL))


# ---------------------------------------------------------------------------- procedural


def test_scene_samples_are_named_and_shaped(scenes):
    s = scenes[1]
    assert isinstance(s, Sample) and s.name == "scene_000001"
    assert s.image.shape == (48, 64, 3) and s.image.dtype == np.uint8
    assert s.masks.dtype == bool and s.masks.shape[1:] == (48, 64)
    assert scenes[-1].name == "scene_000002" and scenes.name(0) == "scene_000000"
    with pytest.raises(IndexError):
        scenes[3]


# ---------------------------------------------------------------------------- SA-1B


def test_sa1b_round_trip_and_resume(scenes, tmp_path):
    out = tmp_path / "frozen"
    paths = write_sa1b_dataset(scenes, out)
    assert [p.name for p in paths] == [f"scene_{i:06d}.json" for i in range(3)]
    folder = SA1BFolder(out)
    assert len(folder) == 3
    for i in range(3):
        a, b = scenes[i], folder[i]
        assert b.name == a.name
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.masks, a.masks)
    # a re-run skips finished samples (files untouched) and redoes a missing one
    mtime = (out / "scene_000000.json").stat().st_mtime_ns
    (out / "scene_000002.json").unlink()
    write_sa1b_dataset(scenes, out)
    assert (out / "scene_000000.json").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(SA1BFolder(out)[2].masks, scenes[2].masks)
    assert not list(out.glob(".*"))  # no temporary files left
    assert isinstance(open_dataset(out), SA1BFolder)
    assert len(open_dataset({"type": "sa1b", "root": str(out)})) == 3


def test_sa1b_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SA1BFolder(tmp_path / "nope")
    (tmp_path / "lonely.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"<stem>\.json"):
        SA1BFolder(tmp_path)


def test_write_rejects_duplicate_names(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    data = [Sample(img, np.zeros((0, 4, 5), bool), "a")] * 2
    with pytest.raises(ValueError, match="unique"):
        write_sa1b_dataset(data, tmp_path)


# ---------------------------------------------------------------------------- COCO


def _coco_files(root, images_sub: bool = False):
    h, w = 20, 30
    img_dir = root / "images" if images_sub else root
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(img_dir / "a.png")
    Image.fromarray(np.full((h, w, 3), 50, np.uint8)).save(img_dir / "b.png")
    poly = [[2, 2, 12, 2, 12, 10, 2, 10]]
    rle_mask = np.zeros((h, w), bool)
    rle_mask[5:15, 20:28] = True
    unc_mask = np.zeros((h, w), bool)
    unc_mask[0:3, 0:30] = True
    anns = [
        {"id": 1, "image_id": 1, "segmentation": poly, "iscrowd": 0, "category_id": 1},
        {"id": 2, "image_id": 1, "segmentation": encode_coco_rle(rle_mask), "iscrowd": 0},
        {"id": 3, "image_id": 1, "segmentation": encode_uncompressed_rle(unc_mask), "iscrowd": 1},
        {"id": 4, "image_id": 2, "segmentation": encode_uncompressed_rle(unc_mask)},
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": h, "width": w},
            {"id": 2, "file_name": "b.png", "height": h, "width": w},
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, polygons_to_mask(poly, h, w), rle_mask, unc_mask


def test_coco_polygon_rle_uncompressed_and_crowd_skipped(tmp_path):
    path, poly_mask, rle_mask, unc_mask = _coco_files(tmp_path)
    ds = CocoInstances(path, tmp_path)
    assert len(ds) == 2
    a = ds[0]
    assert a.name == "a" and a.image.shape == (20, 30, 3)
    assert a.masks.shape == (2, 20, 30)  # the crowd annotation is skipped
    np.testing.assert_array_equal(a.masks[0], poly_mask)
    assert a.masks[0].sum() == 10 * 8  # polygon on pixel edges: x 2..12, y 2..10
    np.testing.assert_array_equal(a.masks[1], rle_mask)
    np.testing.assert_array_equal(ds[1].masks, unc_mask[None])
    # open_dataset: the JSON path (images next to it) and the dict form
    assert len(open_dataset(path)) == 2
    ds2 = open_dataset({"type": "coco", "annotations": str(path), "images": str(tmp_path)})
    np.testing.assert_array_equal(ds2[0].masks, a.masks)


def test_coco_images_subfolder_is_found(tmp_path):
    path, *_ = _coco_files(tmp_path, images_sub=True)
    ds = open_dataset(str(path))
    assert ds.image_dir == tmp_path / "images"
    assert ds[0].masks.shape == (2, 20, 30)


def test_coco_errors(tmp_path):
    path, *_ = _coco_files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no 'images' list"):
        open_dataset(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON"):
        open_dataset(bad)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image_id 99"):
        open_dataset(bad)
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 31
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="31x20"):
        open_dataset(bad)[0]


# ---------------------------------------------------------------------------- specs


def test_procedural_specs():
    ds = open_dataset("procedural:4")
    assert len(ds) == 4 and ds.scenes.seed == 0
    assert ds[0].image.shape == (256, 256, 3)
    ds = open_dataset("procedural:2:7")
    assert ds.scenes.seed == 7
    ds = open_dataset({"type": "procedural", "length": 2, "seed": 3, "height": 40, "width": 50})
    assert ds[1].image.shape == (40, 50, 3) and ds.scenes.seed == 3
    np.testing.assert_array_equal(
        open_dataset({"type": "procedural", "length": 2, "seed": 3, "height": 40, "width": 50})[
            1
        ].masks,
        ds[1].masks,
    )


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("procedural:", ValueError, "procedural:N:SEED"),
        ("procedural:0", ValueError, "must be positive"),
        ("procedural:x", ValueError, "must be an integer"),
        ("procedural:1:2:3", ValueError, "procedural:N"),
        ({"type": "lmdb"}, ValueError, r"'coco', 'procedural', 'sa1b'"),
        ({"type": "procedural"}, ValueError, "needs 'length'"),
        ({"type": "procedural", "length": 2, "size": 3}, ValueError, "unknown keys"),
        ({"type": "coco"}, ValueError, "needs 'annotations'"),
        ({"type": "sa1b"}, ValueError, "needs 'root'"),
        (42, ValueError, "dataset spec is one of"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        open_dataset(spec)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="procedural:N"):
        open_dataset(other)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        open_dataset({"type": "coco", "annotations": str(tmp_path / "x.json")})
