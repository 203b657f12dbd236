"""Mask formats (segany.formats): RLE, SA-1B JSON, COCO export and polygons, checked against
pycocotools (and the official segment-anything RLE code where installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segany.formats import (
    CocoWriter,
    as_coco_rle,
    coco_to_uncompressed_rle,
    decode_coco_rle,
    decode_uncompressed_rle,
    encode_coco_rle,
    encode_uncompressed_rle,
    mask_to_polygons,
    polygons_to_mask,
    read_sa1b_json,
    rle_area,
    rle_to_bbox,
    sa1b_masks,
    uncompressed_to_coco_rle,
    write_sa1b_json,
)

# pycocotools' decode warns about numpy 2's __array__ copy keyword (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _single_pixel(h: int, w: int, y: int, x: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y, x] = True
    return m


def _blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float, wobble: float = 0.0):
    yy, xx = np.mgrid[:h, :w]
    angle = np.arctan2(yy - cy, xx - cx)
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return r < (1.0 + wobble * np.sin(3 * angle)) ** 2


def _edge_case_masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    cases = {
        "1x1 empty": np.zeros((1, 1), dtype=bool),
        "1x1 full": np.ones((1, 1), dtype=bool),
        "7x13 empty": np.zeros((7, 13), dtype=bool),
        "7x13 full": np.ones((7, 13), dtype=bool),
        "1x17 random": rng.random((1, 17)) < 0.5,
        "17x1 random": rng.random((17, 1)) < 0.5,
        "1x9 full": np.ones((1, 9), dtype=bool),
        "9x1 first only": _single_pixel(9, 1, 0, 0),
        "checkerboard 7x13": (np.add.outer(np.arange(7), np.arange(13)) % 2).astype(bool),
        "blob 300x200": _blob(300, 200, 150, 90, 120, 70, wobble=0.2),  # long runs
    }
    for name, (y, x) in {
        "top-left": (0, 0),
        "top-right": (0, 12),
        "bottom-left": (6, 0),
        "bottom-right": (6, 12),
        "centre": (3, 6),
    }.items():
        cases[f"pixel {name}"] = _single_pixel(7, 13, y, x)
    return cases


EDGE_CASES = _edge_case_masks()


def _pycoco_encode(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def reference_uncompressed_rle(mask: np.ndarray) -> dict:
    """The official uncompressed RLE format written out pixel by pixel: column-major order,
    counts alternate 0-runs and 1-runs, starting with the 0-run (0 if the mask starts with 1)."""
    h, w = mask.shape
    counts, current, run = [], False, 0
    for x in range(w):
        for y in range(h):
            value = bool(mask[y, x])
            if value != current:
                counts.append(run)
                current, run = value, 0
            run += 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask with holes filled: everything not 4-connected to the border through background."""
    outside = np.pad(np.zeros_like(mask), 1, constant_values=True)
    background = np.pad(~mask, 1, constant_values=True)
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= background
        if (grown == outside).all():
            return ~outside[1:-1, 1:-1]
        outside = grown


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --------------------------------------------------------------------------- COCO RLE


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_encode_coco_rle_is_byte_identical_to_pycocotools(name):
    mask = EDGE_CASES[name]
    ours = encode_coco_rle(mask)
    ref = _pycoco_encode(mask)
    assert isinstance(ours, dict) and isinstance(ours["counts"], str)
    assert ours["counts"].encode("ascii") == ref["counts"]
    assert ours["size"] == list(ref["size"]) == list(mask.shape)
    json.dumps(ours)  # JSON-serialisable as is
    assert (decode_coco_rle(ours) == mask).all()
    assert (mask_utils.decode(ours) == mask).all()  # pycocotools reads str counts too


def test_encode_coco_rle_many_masks_and_dtypes():
    rng = np.random.default_rng(0)
    masks = rng.random((64, 31, 47)) < rng.random((64, 1, 1))
    masks[0] = False
    masks[1] = True
    ours = encode_coco_rle(masks)
    assert isinstance(ours, list) and len(ours) == 64
    assert [r["counts"].encode() for r in ours] == [_pycoco_encode(m)["counts"] for m in masks]
    # integer masks: non-zero is inside
    assert encode_coco_rle(masks.astype(np.uint8) * 255) == ours
    assert encode_coco_rle(masks.astype(np.int64)) == ours
    # a non-contiguous view encodes the same as its copy
    assert encode_coco_rle(masks[::2, :, ::-1]) == encode_coco_rle(masks[::2, :, ::-1].copy())
    # masks stored column-major ((N, W, H) C-ordered, viewed as (N, H, W)): read without a copy
    column_major = np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert encode_coco_rle(column_major) == ours
    assert encode_coco_rle(np.zeros((0, 5, 4), dtype=bool)) == []
    decoded = decode_coco_rle(ours)
    assert decoded.shape == masks.shape and decoded.dtype == np.bool_
    assert decoded.flags.c_contiguous
    assert (decoded == masks).all()


def test_decode_coco_rle_accepts_str_and_bytes_counts():
    mask = EDGE_CASES["blob 300x200"]
    ref = _pycoco_encode(mask)
    as_str = {"size": ref["size"], "counts": ref["counts"].decode()}
    single = decode_coco_rle(ref)
    assert single.shape == mask.shape and single.dtype == np.bool_
    assert (single == mask).all() and (decode_coco_rle(as_str) == mask).all()
    both = decode_coco_rle([ref, as_str])
    assert both.shape == (2, *mask.shape) and (both == mask).all()


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ({"size": [3, 3], "counts": "3"}, "sum to 3"),  # pycocotools decodes garbage here
        ({"size": [3, 3], "counts": ""}, "empty"),
        ({"size": [3, 3], "counts": "0"}, "sum to 0"),
        ({"size": [3, 3], "counts": "09~"}, "characters"),
        ({"size": [3, 3], "counts": "0P"}, "truncated"),  # 'P' has the "more" bit set
        ({"size": [3, 3], "counts": [0, 9]}, "str or bytes"),
        ({"size": [3, 0], "counts": "0"}, "size"),
        ({"size": [3], "counts": "9"}, "size"),
        ({"counts": "9"}, "'size' and 'counts'"),
    ],
)
def test_decode_coco_rle_rejects_malformed(rle, match):
    with pytest.raises(ValueError, match=match):
        decode_coco_rle(rle)


def test_decode_coco_rle_list_errors():
    with pytest.raises(ValueError, match="empty list"):
        decode_coco_rle([])
    a = encode_coco_rle(np.zeros((3, 4), dtype=bool))
    b = encode_coco_rle(np.zeros((4, 3), dtype=bool))
    with pytest.raises(ValueError, match="same size"):
        decode_coco_rle([a, b])


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        (np.zeros(5, dtype=bool), "shape"),
        (np.zeros((1, 2, 3, 4), dtype=bool), "shape"),
        (np.zeros((0, 4), dtype=bool), "non-empty"),
        (np.zeros((2, 4, 0), dtype=bool), "non-empty"),
        (np.zeros((4, 4), dtype=np.float32), "dtype"),
    ],
)
def test_encoders_validate_masks(masks, match):
    for encode in (encode_coco_rle, encode_uncompressed_rle):
        with pytest.raises(ValueError, match=match):
            encode(masks)


# --------------------------------------------------------------------------- uncompressed RLE


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_uncompressed_rle_matches_reference_and_pycocotools(name):
    mask = EDGE_CASES[name]
    ours = encode_uncompressed_rle(mask)
    assert ours == reference_uncompressed_rle(mask)
    assert all(type(c) is int for c in ours["counts"])
    assert (ours["counts"][0] == 0) == bool(mask.T.ravel()[0])
    from_py = mask_utils.frPyObjects(ours, *mask.shape)
    assert (mask_utils.decode(from_py) == mask).all()
    assert from_py["counts"] == _pycoco_encode(mask)["counts"]
    back = decode_uncompressed_rle(ours)
    assert back.dtype == np.bool_ and (back == mask).all()


def test_uncompressed_rle_many_masks_vectorised():
    rng = np.random.default_rng(2)
    masks = rng.random((40, 9, 14)) < rng.random((40, 1, 1))
    masks[3] = True
    masks[4] = False
    ours = encode_uncompressed_rle(masks)
    assert ours == [reference_uncompressed_rle(m) for m in masks]
    assert encode_uncompressed_rle(np.zeros((0, 3, 3), dtype=bool)) == []


def test_uncompressed_rle_equals_official_segment_anything():
    torch = pytest.importorskip("torch")
    amg = pytest.importorskip("segment_anything.utils.amg")
    rng = np.random.default_rng(3)
    masks = rng.random((12, 11, 7)) < rng.random((12, 1, 1))
    masks[0], masks[1] = True, False
    masks[2] = _single_pixel(11, 7, 0, 0)
    official = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert encode_uncompressed_rle(masks) == official
    assert [rle_area(r) for r in official] == [amg.area_from_rle(r) for r in official]


def test_conversions_between_rle_kinds():
    for mask in EDGE_CASES.values():
        coco, unc = encode_coco_rle(mask), encode_uncompressed_rle(mask)
        assert uncompressed_to_coco_rle(unc) == coco
        assert coco_to_uncompressed_rle(coco) == unc
        bytes_counts = {"size": coco["size"], "counts": coco["counts"].encode()}
        assert coco_to_uncompressed_rle(bytes_counts) == unc
    # non-canonical runs (an empty run of 1s in the middle) come back canonical
    odd = {"size": [3, 3], "counts": [2, 0, 3, 4]}
    assert coco_to_uncompressed_rle(uncompressed_to_coco_rle(odd)) == {
        "size": [3, 3],
        "counts": [5, 4],
    }
    assert (
        decode_uncompressed_rle(odd) == decode_uncompressed_rle({**odd, "counts": [5, 4]})
    ).all()


@pytest.mark.parametrize(
    ("counts", "match"),
    [([1, 2], "sum to 3"), ([5, -1, 5], "negative"), ("abc", "list of ints"), ([1.5, 7.5], "int")],
)
def test_uncompressed_rle_validation(counts, match):
    with pytest.raises(ValueError, match=match):
        decode_uncompressed_rle({"size": [3, 3], "counts": counts})


def test_area_and_bbox_equal_pycocotools():
    rng = np.random.default_rng(4)
    masks = list(EDGE_CASES.values()) + list(rng.random((20, 12, 9)) < 0.1)
    # a run of 1s crossing from the bottom of one column to the top of the next
    wrap = np.zeros((6, 5), dtype=bool)
    wrap[4:, 1] = True
    wrap[:2, 2] = True
    masks.append(wrap)
    for mask in masks:
        ref = _pycoco_encode(mask)
        coco, unc = encode_coco_rle(mask), encode_uncompressed_rle(mask)
        assert rle_area(coco) == rle_area(unc) == int(mask_utils.area(ref)) == int(mask.sum())
        assert rle_to_bbox(coco) == rle_to_bbox(unc) == mask_utils.toBbox(ref).tolist()
        assert all(type(v) is float for v in rle_to_bbox(coco))
    pixel = encode_coco_rle(_single_pixel(7, 13, 3, 6))
    assert rle_to_bbox(pixel) == [6.0, 3.0, 1.0, 1.0]
    assert rle_to_bbox(encode_coco_rle(np.zeros((4, 4), dtype=bool))) == [0.0, 0.0, 0.0, 0.0]


def test_as_coco_rle_accepts_all_segmentation_kinds():
    mask = _blob(20, 30, 10, 15, 6, 9)
    coco = encode_coco_rle(mask)
    polygons = mask_to_polygons(mask, tolerance=0)
    assert as_coco_rle(mask) == coco
    assert as_coco_rle(encode_uncompressed_rle(mask)) == coco
    assert as_coco_rle({"size": coco["size"], "counts": coco["counts"].encode()}) == coco
    assert as_coco_rle(polygons, 20, 30) == coco  # hole-free mask: exact
    with pytest.raises(ValueError, match="does not match"):
        as_coco_rle(mask, 30, 20)
    with pytest.raises(ValueError, match="height and width"):
        as_coco_rle(polygons)


# --------------------------------------------------------------------------- SA-1B JSON


def _generator_records(h: int, w: int) -> tuple[list[dict], np.ndarray]:
    """Mask records like SamAutomaticMaskGenerator's, with numpy scalars and all
    segmentation kinds."""
    masks = np.stack(
        [
            _blob(h, w, 10, 12, 6, 8),
            _blob(h, w, 25, 30, 8, 10, wobble=0.2),
            _single_pixel(h, w, h - 1, w - 1),
            np.zeros((h, w), dtype=bool),
        ]
    )
    unc = encode_uncompressed_rle(masks)
    coco = encode_coco_rle(masks)
    segs = [masks[0], unc[1], {"size": coco[2]["size"], "counts": coco[2]["counts"].encode()}]
    segs.append(masks[3].astype(np.uint8))
    records = []
    for i, seg in enumerate(segs):
        records.append(
            {
                "segmentation": seg,
                "area": np.int64(masks[i].sum()),
                "bbox": np.array(rle_to_bbox(coco[i]), dtype=np.float32),
                "predicted_iou": np.float32(0.9 - 0.1 * i),
                "stability_score": np.float64(0.95),
                "crop_box": (0, 0, w, h),
                "point_coords": np.array([[3.5 + i, 4.25]]),
            }
        )
    return records, masks


def test_sa1b_write_read_roundtrip(tmp_path):
    h, w = 40, 50
    records, masks = _generator_records(h, w)
    del records[1]["bbox"], records[1]["area"]  # computed when missing
    path = tmp_path / "sa_1.json"
    write_sa1b_json(
        path, image_id=np.int64(1), file_name="sa_1.jpg", width=w, height=h, annotations=records
    )
    assert os.listdir(tmp_path) == ["sa_1.json"]  # no temporary file left behind

    raw = json.loads(path.read_text())
    assert raw["image"] == {"image_id": 1, "width": w, "height": h, "file_name": "sa_1.jpg"}
    anns = raw["annotations"]
    assert [a["id"] for a in anns] == [0, 1, 2, 3]
    for ann, mask, rec in zip(anns, masks, records, strict=True):
        assert set(ann) == {
            "id",
            "segmentation",
            "bbox",
            "area",
            "predicted_iou",
            "stability_score",
            "crop_box",
            "point_coords",
        }
        assert isinstance(ann["segmentation"]["counts"], str)
        assert (mask_utils.decode(ann["segmentation"]) == mask).all()
        ref = _pycoco_encode(mask)
        assert ann["segmentation"]["counts"].encode() == ref["counts"]
        assert ann["area"] == int(mask.sum()) and type(ann["area"]) is int
        assert ann["bbox"] == mask_utils.toBbox(ref).tolist()
        assert ann["predicted_iou"] == float(rec["predicted_iou"])
        assert ann["crop_box"] == [0.0, 0.0, float(w), float(h)]
        assert ann["point_coords"] == rec["point_coords"].tolist()

    record = read_sa1b_json(path)
    assert record == raw
    decoded = sa1b_masks(record)
    assert decoded.shape == masks.shape and (decoded == masks).all()


def test_sa1b_custom_ids_and_defaults(tmp_path):
    mask = _blob(16, 16, 8, 8, 4, 5)
    path = tmp_path / "a.json"
    write_sa1b_json(
        path,
        image_id="img-7",
        file_name="a.png",
        width=16,
        height=16,
        annotations=[
            {"segmentation": mask, "predicted_iou": 1, "stability_score": 0.5, "id": 42},
            {"segmentation": ~mask, "predicted_iou": 0.5, "stability_score": 0.5, "id": 7},
        ],
    )
    rec = read_sa1b_json(path)
    assert [a["id"] for a in rec["annotations"]] == [42, 7]
    assert rec["annotations"][0]["crop_box"] == [0, 0, 16, 16]
    assert rec["annotations"][0]["point_coords"] == []
    assert rec["image"]["image_id"] == "img-7"
    empty = tmp_path / "empty.json"
    write_sa1b_json(empty, image_id=0, file_name="e.png", width=5, height=3, annotations=[])
    assert sa1b_masks(read_sa1b_json(empty)).shape == (0, 3, 5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: r.update(predicted_iou=float("nan")), "finite"),
        (lambda r: r.pop("stability_score"), "stability_score"),
        (lambda r: r.pop("segmentation"), "segmentation"),
        (lambda r: r.update(segmentation=np.zeros((5, 5), bool)), "does not match"),
        (lambda r: r.update(area=3), "area"),
        (lambda r: r.update(bbox=[1, 2, 3]), "bbox"),
        (lambda r: r.update(point_coords=[[1, 2, 3]]), "point_coords"),
        (lambda r: r.update(id=0), "duplicate"),
    ],
)
def test_sa1b_writer_rejects_bad_records(tmp_path, change, match):
    records, _ = _generator_records(40, 50)
    change(records[1])
    path = tmp_path / "bad.json"
    with pytest.raises(ValueError, match=match):
        write_sa1b_json(
            path, image_id=1, file_name="x.jpg", width=50, height=40, annotations=records
        )
    assert os.listdir(tmp_path) == []


def _write_small(path: Path) -> None:
    records, _ = _generator_records(40, 50)
    write_sa1b_json(path, image_id=1, file_name="x.jpg", width=50, height=40, annotations=records)


def test_sa1b_write_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.json"

    def broken_fsync(fd):  # the data is in the temporary file, not yet in place
        assert os.fstat(fd).st_size > 0
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _write_small(path)
    assert os.listdir(tmp_path) == []  # no target, no temporary file

    monkeypatch.undo()
    _write_small(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="replace failed"):
        write_sa1b_json(path, image_id=2, file_name="y.jpg", width=5, height=5, annotations=[])
    assert os.listdir(tmp_path) == ["x.json"] and path.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("annotations"), "'annotations'"),
        (lambda d: d["image"].pop("height"), "'height'"),
        (lambda d: d["annotations"][1].pop("predicted_iou"), r"annotations\[1\] is missing"),
        (lambda d: d["annotations"][0].pop("segmentation"), "'segmentation'"),
        (lambda d: d["annotations"][0]["segmentation"].update(size=[4, 4]), "size"),
        (lambda d: d["annotations"][0]["segmentation"].update(counts="0"), "sum to"),
        (lambda d: d["annotations"][2].update(bbox="oops"), "bbox"),
        (lambda d: d["annotations"][2].update(id=0), "duplicate"),
    ],
)
def test_sa1b_reader_names_file_and_problem(tmp_path, change, match):
    path = tmp_path / "in.json"
    _write_small(path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        read_sa1b_json(path)
    assert str(path) in str(info.value)


def test_sa1b_reader_rejects_non_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"image": ')
    with pytest.raises(ValueError, match="not a valid JSON") as info:
        read_sa1b_json(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- COCO export


def _coco(path: Path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    return coco_mod.COCO(str(path))


def test_coco_export_rle_roundtrip(tmp_path, capsys):
    records, masks = _generator_records(40, 50)
    other = np.stack([_blob(30, 20, 15, 10, 9, 6), _single_pixel(30, 20, 0, 19)])
    writer = CocoWriter()
    a = writer.add_image("a.jpg", 50, 40, annotations=records)
    b = writer.add_image("sub/b.jpg", 20, 30, id=10, license=1)
    ids_b = writer.add_annotations(b, list(other))
    path = tmp_path / "instances.json"
    writer.write(path)
    assert os.listdir(tmp_path) == ["instances.json"]

    coco = _coco(path)
    assert sorted(coco.getImgIds()) == [a, 10]
    assert coco.imgs[10]["license"] == 1 and coco.imgs[10]["file_name"] == "sub/b.jpg"
    assert coco.loadCats(coco.getCatIds()) == [
        {"id": 1, "name": "object", "supercategory": "object"}
    ]
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) == len(set(ann_ids)) == len(masks) + len(other)
    for image_id, expected in ((a, masks), (b, other)):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(expected)
        for ann, mask in zip(anns, expected, strict=True):
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1
            assert isinstance(ann["segmentation"]["counts"], str)
            decoded = coco.annToMask(ann).astype(bool)
            assert (decoded == mask).all()
            assert ann["area"] == int(mask.sum())
            assert ann["bbox"] == mask_utils.toBbox(_pycoco_encode(mask)).tolist()
    assert [x["id"] for x in coco.loadAnns(ids_b)] == ids_b
    assert coco.anns[1]["predicted_iou"] == pytest.approx(0.9)
    assert "info" in json.loads(path.read_text())
    capsys.readouterr()  # COCO() prints progress


def test_coco_export_polygons_close_to_masks(tmp_path, capsys):
    h, w = 96, 128
    blobs = [
        _blob(h, w, 30, 40, 20, 28, wobble=0.15),
        _blob(h, w, 60, 90, 25, 18, wobble=0.25),
        _blob(h, w, 75, 25, 10, 12),
    ]
    empty = np.zeros((h, w), dtype=bool)
    writer = CocoWriter(segmentation="polygon")
    image_id = writer.add_image("p.png", w, h, annotations=[*blobs, empty])
    path = tmp_path / "poly.json"
    writer.write(path)
    coco = _coco(path)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    for ann, mask in zip(anns[:3], blobs, strict=True):
        assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        decoded = coco.annToMask(ann).astype(bool)
        assert _iou(decoded, mask) > 0.9
        assert ann["area"] == int(decoded.sum())  # area/bbox describe what is stored
    # an empty mask has no polygon: stored as RLE, still decodes
    assert isinstance(anns[3]["segmentation"], dict)
    assert not coco.annToMask(anns[3]).any()
    capsys.readouterr()


def test_coco_writer_categories_and_validation(tmp_path, capsys):
    cats = [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]
    writer = CocoWriter(categories=cats)
    mask = _blob(10, 12, 5, 6, 3, 4)
    image_id = writer.add_image("c.png", 12, 10)
    writer.add_annotation(image_id, {"segmentation": mask, "category_id": 5})
    writer.add_annotation(image_id, mask)  # default: the first category
    with pytest.raises(ValueError, match="not a known category"):
        writer.add_annotation(image_id, {"segmentation": mask, "category_id": 1})
    with pytest.raises(ValueError, match="does not match"):
        writer.add_annotation(image_id, mask.T)
    with pytest.raises(ValueError, match="unknown image id"):
        writer.add_annotation(99, mask)
    with pytest.raises(ValueError, match="already added"):
        writer.add_image("c.png", 12, 10)
    with pytest.raises(ValueError, match="already used"):
        writer.add_image("d.png", 12, 10, id=image_id)
    with pytest.raises(ValueError, match="segmentation"):
        CocoWriter(segmentation="mask")
    path = tmp_path / "c.json"
    writer.write(path)
    coco = _coco(path)
    assert [a["category_id"] for a in coco.loadAnns(coco.getAnnIds())] == [5, 3]
    assert sorted(coco.cats) == [3, 5]
    capsys.readouterr()


# --------------------------------------------------------------------------- polygons


def test_rectangle_polygon_is_its_four_corners():
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:11, 7:25] = True  # rows 4..10, cols 7..24
    for tolerance in (0, 1.0):
        polys = mask_to_polygons(mask, tolerance=tolerance)
        assert polys == [[7.0, 4.0, 25.0, 4.0, 25.0, 11.0, 7.0, 11.0]]
    assert (polygons_to_mask(polys, 20, 30) == mask).all()
    full = mask_to_polygons(np.ones((3, 5), dtype=bool))
    assert full == [[0.0, 0.0, 5.0, 0.0, 5.0, 3.0, 0.0, 3.0]]


def test_exact_polygons_rasterise_to_the_hole_filled_mask():
    rng = np.random.default_rng(5)
    for _ in range(150):
        h, w = rng.integers(1, 16, size=2)
        mask = rng.random((h, w)) < rng.random()
        polys = mask_to_polygons(mask, tolerance=0)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        assert (polygons_to_mask(polys, int(h), int(w)) == _fill_holes(mask)).all()
        if not mask.any():
            assert polys == []


def test_holes_are_filled_and_parts_sorted():
    ring = np.zeros((12, 12), dtype=bool)
    ring[1:10, 1:10] = True
    ring[3:8, 3:8] = False
    ring[5, 5] = True  # a part inside the hole: covered by the outer polygon
    polys = mask_to_polygons(ring, tolerance=0)
    assert polys == [[1.0, 1.0, 10.0, 1.0, 10.0, 10.0, 1.0, 10.0]]
    two = np.zeros((20, 20), dtype=bool)
    two[1:3, 1:3] = True  # area 4
    two[8:18, 5:15] = True  # area 100
    polys = mask_to_polygons(two, tolerance=0)
    assert polys == [
        [5.0, 8.0, 15.0, 8.0, 15.0, 18.0, 5.0, 18.0],
        [1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0],
    ]
    assert mask_to_polygons(two, tolerance=0, min_area=5) == polys[:1]
    assert mask_to_polygons(np.zeros((4, 4), dtype=bool)) == []


def _point_polygon_distance(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def test_simplification_respects_tolerance():
    mask = _blob(120, 140, 60, 70, 45, 55, wobble=0.2)
    exact = np.array(mask_to_polygons(mask, tolerance=0)[0]).reshape(-1, 2)
    for tolerance in (1.0, 2.5):
        polys = mask_to_polygons(mask, tolerance=tolerance)
        assert len(polys) == 1
        simple = np.array(polys[0]).reshape(-1, 2)
        assert 3 <= len(simple) < len(exact) // 2
        assert _point_polygon_distance(exact, simple).max() <= tolerance + 1e-9
        assert _iou(polygons_to_mask(polys, 120, 140), mask) > 0.97
    # tiny parts keep a valid polygon instead of collapsing
    pixel = _single_pixel(5, 5, 2, 3)
    polys = mask_to_polygons(pixel, tolerance=3.0)
    assert len(polys) == 1 and len(polys[0]) >= 6
    assert (polygons_to_mask(polys, 5, 5) == pixel).all()


def test_polygon_validation():
    with pytest.raises(ValueError, match=">= 6"):
        polygons_to_mask([[0, 0, 2, 2]], 4, 4)  # pycocotools would read this as a box
    with pytest.raises(ValueError, match="even"):
        polygons_to_mask([[0, 0, 2, 0, 2, 2, 1]], 4, 4)
    with pytest.raises(ValueError, match="flat"):
        polygons_to_mask([[[0, 0], [2, 0], [2, 2]]], 4, 4)
    with pytest.raises(ValueError, match="tolerance"):
        mask_to_polygons(np.ones((3, 3), dtype=bool), tolerance=-1)
    with pytest.raises(ValueError, match="shape"):
        mask_to_polygons(np.ones((2, 3, 3), dtype=bool))
    empty = polygons_to_mask([], 3, 4)
    assert empty.shape == (3, 4) and empty.dtype == np.bool_ and not empty.any()


# --------------------------------------------------------------------------- torch-free


def test_formats_work_without_torch(tmp_path):
    code = f"""
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
import numpy as np
import segany.formats as f
m = np.zeros((6, 8), bool); m[1:4, 2:6] = True
assert (f.decode_coco_rle(f.encode_coco_rle(m)) == m).all()
assert f.mask_to_polygons(m) == [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]]
w = f.CocoWriter(segmentation="polygon"); w.add_image("a.png", 8, 6, annotations=[m])
w.write({str(tmp_path / "c.json")!r})
f.write_sa1b_json({str(tmp_path / "s.json")!r}, image_id=1, file_name="a.png", width=8,
                  height=6, annotations=[{{"segmentation": m, "predicted_iou": 1.0,
                                           "stability_score": 1.0}}])
assert (f.sa1b_masks(f.read_sa1b_json({str(tmp_path / "s.json")!r}))[0] == m).all()
print("ok", [k for k in sys.modules if k == "torch" or k.startswith("torch.")])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok ['torch']"  # only the blocking None entry
