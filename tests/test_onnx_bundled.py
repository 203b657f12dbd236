"""ONNX export of the bundled model: ONNX Runtime agrees with PyTorch on generated scenes, int8
keeps the masks (mean mask IoU >= 0.95), and the automatic mask generator gives
the same masks on either backend (``segany auto --backend onnx``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import segany
from segany.amg import SamAutomaticMaskGenerator
from segany.cli.main import main
from segany.data.scenes import ProceduralScenes
from segany.export import export_onnx
from tests.helpers import onnx_predictor, run_suite

pytestmark = pytest.mark.usefixtures("one_thread")

INT8_BAR = 0.95  # least mean IoU between int8 and fp32 masks for the bundled model


@pytest.fixture(scope="module")
def bundled_export(bundled, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_bundled")
    export_onnx(bundled, out, quantize=True, name="segany_tiny")
    return out


@pytest.fixture(scope="module")
def scene():
    return ProceduralScenes(4, seed=7, sizes=((200, 260),))[1].image  # not square, not 256


def test_bundled_onnx_matches_torch(bundled, bundled_export, scene):
    ours = onnx_predictor(bundled_export)
    ref = segany.SamPredictor(bundled)
    ours.set_image(scene)
    ref.set_image(scene)
    emb = ours.get_image_embedding()
    np.testing.assert_allclose(emb, ref.get_image_embedding().numpy(), atol=1e-4, rtol=0)
    h, w = scene.shape[:2]
    run_suite(ours, ref, h, w)


def test_bundled_int8_masks_match_fp32(bundled_export, capsys):
    report = json.loads((bundled_export / "quantization_report.json").read_text())
    iou = report["summary"]["mean_mask_iou"]
    with capsys.disabled():
        print(
            f"\n[int8 vs fp32, bundled segany_tiny] mean mask IoU {iou:.3f}; parts: "
            + ", ".join(f"{k} {v['mean_mask_iou']:.3f}" for k, v in report["parts"].items())
        )
    assert report["parts"]["int8"]["masks"] > 20
    assert iou >= INT8_BAR


def _records_match(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 3
    for x, y in zip(a, b, strict=True):
        ma, mb = x["segmentation"], y["segmentation"]
        assert (ma & mb).sum() / max((ma | mb).sum(), 1) >= 0.99
        assert abs(x["predicted_iou"] - y["predicted_iou"]) <= 1e-4
        assert abs(x["stability_score"] - y["stability_score"]) <= 1e-3
        assert x["point_coords"] == y["point_coords"] and x["crop_box"] == y["crop_box"]


def test_automatic_masks_equal_on_onnx_backend(bundled, bundled_export, scene):
    kw = dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.5, crop_n_layers=1)
    torch_records = SamAutomaticMaskGenerator(bundled, **kw).generate(scene)
    onnx_gen = SamAutomaticMaskGenerator(onnx_predictor(bundled_export), **kw)
    assert onnx_gen.predictor.__class__.__name__ == "OnnxPredictor"
    _records_match(torch_records, onnx_gen.generate(scene))


def test_onnx_backend_needs_multimask_and_encoder(bundled, tmp_path):
    single = tmp_path / "single"
    export_onnx(bundled, single, return_single_mask=True, encoder=False, name="t")
    with pytest.raises(ValueError, match="return-single-mask"):
        SamAutomaticMaskGenerator(onnx_predictor(single))
    no_enc = tmp_path / "no_encoder"
    export_onnx(bundled, no_enc, encoder=False, name="t")
    with pytest.raises(ValueError, match="no encoder"):
        SamAutomaticMaskGenerator(onnx_predictor(no_enc))
    with pytest.raises(TypeError, match="OnnxPredictor"):
        SamAutomaticMaskGenerator("segany_tiny")


def test_cli_auto_with_onnx_backend(bundled_export, scene, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(scene).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["auto", str(tmp_path / "scene.png"), "--out", str(out), "--format", "sa1b"]
    knobs = ["--points-per-side", "8", "--pred-iou-thresh", "0.2"]
    knobs += ["--stability-score-thresh", "0.5"]
    code = main([*args, *knobs, "--backend", "onnx", "--model", str(bundled_export)])
    assert code == 0, capsys.readouterr().err
    onnx_doc = json.loads((out / "scene.json").read_text())
    code = main([*args, *knobs, "--out", str(tmp_path / "out_torch"), "--precision", "fp32"])
    assert code == 0
    torch_doc = json.loads((tmp_path / "out_torch" / "scene.json").read_text())
    assert len(onnx_doc["annotations"]) == len(torch_doc["annotations"]) > 0
    # a folder that is not an export: "model not available" (exit code 3)
    code = main([*args, "--out", str(tmp_path / "o3"), "--backend", "onnx", "--model", "vit_b"])
    assert code == 3
