"""`segany auto`: outputs per format, resumable re-runs, unreadable images, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.cli.main import main
from tests.helpers import TINY, make_amg_pair, random_image

LOOSE = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--points-per-side", "4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "tiny.pth"
    torch.save(make_amg_pair(TINY, 0, 10.0)[1].state_dict(), path)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(random_image(60, 80, seed=1)).save(d / "a.png")
    Image.fromarray(random_image(50, 40, seed=2)).save(d / "b.jpg")
    (d / "broken.png").write_bytes(b"not an image at all")
    (d / "notes.txt").write_text("ignored: not an image file")
    return d


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_png_folder_like_amg_py_and_resume(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["auto", str(folder), "--out", str(out), "--model", ckpt, "--precision", "fp32", *LOOSE]
    )
    assert code == 4  # the broken image is reported, the others are done
    summary = _summary(capsys)
    assert summary["done"] == 2 and summary["failed"] == [str(folder / "broken.png")]
    for name, (h, w) in (("a", (60, 80)), ("b", (50, 40))):
        rows = (out / name / "metadata.csv").read_text().strip().splitlines()
        assert rows[0].startswith("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x")
        assert len(rows) > 1
        pngs = sorted((out / name).glob("*.png"))
        assert len(pngs) == len(rows) - 1
        first = np.asarray(Image.open(out / name / "0.png"))
        assert first.shape == (h, w) and int(rows[1].split(",")[1]) == int((first > 0).sum())
    assert not list(out.glob(".*tmp*"))
    # a re-run skips finished images and still reports the broken one
    code = main(["auto", str(folder), "--out", str(out), "--model", ckpt, *LOOSE])
    assert code == 4
    summary = _summary(capsys)
    assert summary["skipped"] == 2 and summary["done"] == 0


@pytest.mark.parametrize("fmt", ["sa1b", "coco", "coco_rle"])
def test_json_formats(ckpt, tmp_path, capsys, fmt):
    from pycocotools.coco import COCO

    from segany.formats import read_sa1b_json, sa1b_masks

    img = tmp_path / "x.png"
    Image.fromarray(random_image(64, 48, seed=3)).save(img)
    out = tmp_path / "out"
    code = main(
        ["auto", str(img), "--out", str(out), "--model", ckpt, "--format", fmt, "--overlay", *LOOSE]
    )
    assert code == 0
    assert (out / "x.overlay.png").is_file()
    data = json.loads((out / "x.json").read_text())
    if fmt == "coco_rle":
        assert (
            isinstance(data, list) and data and isinstance(data[0]["segmentation"]["counts"], str)
        )
    else:
        rec = read_sa1b_json(out / "x.json")
        assert rec["image"]["width"] == 48 and rec["image"]["height"] == 64
        masks = sa1b_masks(rec)
        assert masks.shape[1:] == (64, 48)
        assert [a["area"] for a in rec["annotations"]] == [int(m.sum()) for m in masks]
    if fmt == "coco":
        coco = COCO(str(out / "annotations.coco.json"))
        assert len(coco.getAnnIds()) == len(data["annotations"])


def test_convert_to_rle_alias_and_errors(ckpt, tmp_path, capsys):
    img = tmp_path / "y.png"
    Image.fromarray(random_image(40, 40, seed=4)).save(img)
    out = tmp_path / "o"
    assert (
        main(
            [
                "auto",
                "--input",
                str(img),
                "--output",
                str(out),
                "--checkpoint",
                ckpt,
                "--convert-to-rle",
                *LOOSE,
            ]
        )
        == 0
    )
    assert isinstance(json.loads((out / "y.json").read_text()), list)
    assert main(["auto", str(tmp_path / "missing"), "--out", str(out), "--model", ckpt]) == 2
    assert (
        main(
            [
                "auto",
                str(img),
                "--out",
                str(out),
                "--model",
                str(tmp_path / "nope.pth"),
                "--overwrite",
            ]
        )
        == 3
    )
    assert main(["auto", str(img), "--out", str(out), "--model", ckpt, "--format", "tiff"]) == 2


def test_auto_matches_library(ckpt, tmp_path, capsys):
    """The CLI writes exactly what the library generates."""
    img = tmp_path / "z.png"
    arr = random_image(48, 64, seed=5)
    Image.fromarray(arr).save(img)
    out = tmp_path / "o"
    assert (
        main(
            [
                "auto",
                str(img),
                "--out",
                str(out),
                "--model",
                ckpt,
                "--precision",
                "fp32",
                "--format",
                "coco_rle",
                *LOOSE,
            ]
        )
        == 0
    )
    model = segany.load_model(ckpt, precision="fp32", device="cpu")
    expected = segany.SamAutomaticMaskGenerator(
        model,
        points_per_side=4,
        pred_iou_thresh=0,
        stability_score_thresh=0,
        output_mode="coco_rle",
    ).generate(arr)
    got = json.loads((out / "z.json").read_text())
    assert [r["segmentation"] for r in got] == [r["segmentation"] for r in expected]


def test_usage_errors_and_a_generator_bug(ckpt, folder, tmp_path, capsys, monkeypatch):
    img, out = str(folder / "a.png"), str(tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, message in [
        (["--out", out], "give an INPUT image or folder"),
        ([img, "--input", str(folder / "b.jpg"), "--out", out], "give INPUT once"),
        ([str(empty), "--out", out], "no image files (.bmp, .gif"),
        ([img, "--out", out, "--points-per-side", "0"], "points_per_side must be >= 1"),
    ]:
        assert main(["auto", *argv, "--model", ckpt]) == 2
        err = capsys.readouterr().err
        assert f"segany: error: {message}" in err and "SEGANY_DEBUG" not in err

    def generate(self, image):
        raise ValueError("a bug in the generator")

    monkeypatch.setattr(segany.SamAutomaticMaskGenerator, "generate", generate)
    assert main(["auto", img, "--out", out, "--model", ckpt, *LOOSE]) == 1
    assert "ValueError: a bug in the generator (set SEGANY_DEBUG=1" in capsys.readouterr().err


def test_knob_defaults_are_the_generators(capsys):
    """Knobs left unset are not passed (the generator's own defaults apply; the CLI sizes
    batches from free memory) and help shows the generator's defaults."""
    import inspect

    from segany.cli import auto_cmd
    from segany.cli.main import build_parser

    signature = inspect.signature(segany.SamAutomaticMaskGenerator.__init__).parameters
    args = build_parser().parse_args(["auto", "x.png", "--out", "o", "--box-nms-thresh", "0.5"])
    knobs = {flag.replace("-", "_") for flag, _, _ in auto_cmd.KNOBS}
    assert knobs <= set(signature)
    for name in knobs - {"points_per_batch", "box_nms_thresh"}:
        default = getattr(args, name)
        assert isinstance(default, auto_cmd.GeneratorDefault)
        assert str(default) == str(signature[name].default)
    assert args.points_per_batch is None and args.box_nms_thresh == 0.5
    assert auto_cmd.generator_defaults()["pred_iou_thresh"] == signature["pred_iou_thresh"].default
    assert main(["auto", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"at most this (default: {signature['pred_iou_thresh'].default})" in help_text
    assert f"below this (default: {signature['stability_score_thresh'].default})" in help_text
