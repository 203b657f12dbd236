"""The int8 CPU path: int8 layers against their fp32 reference and the fp32 model (bundled,
trained weights), the round trip to fp32, the CPU classes, what ``precision="auto"`` picks from
a model's report, and the predictor / generator / CLI / ONNX predictor reporting precision."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

import segany
from segany import precision as precision_mod
from segany import precision_check
from segany.cli.main import main
from segany.data.sample import sample_image
from segany.masks import mask_iou
from segany.precision_check import BOUNDS, choose_precision, int8_verdict, model_key, scheme_name
from segany.quantize import (
    CPU_CLASS_ENV,
    Int8Linear,
    cpu_class,
    int8_scheme,
    is_offloaded,
    is_quantized,
    quantize_encoder,
    reference_linear,
)
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """A CPU without native bf16 of class avx2, and an empty report cache."""
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv(CPU_CLASS_ENV, "avx2")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _int8(model):
    return quantize_encoder(copy.deepcopy(model))


def _one_point_masks(model, scenes):
    predictor = segany.SamPredictor(model)
    out = []
    for image, objects in scenes:
        predictor.set_image(image)
        for obj in objects:
            masks, scores, _ = predictor.predict(
                point_coords=np.array([obj.point]), point_labels=np.array([1])
            )
            out.append((masks, scores))
    return out


def test_int8_close_to_fp32_on_the_bundled_model(bundled):
    scenes = [sample_image(512, 384, seed) for seed in (3, 4)]
    int8 = _int8(bundled)
    assert is_quantized(int8) and not is_quantized(bundled)
    assert segany.SamPredictor(int8).precision == "int8"
    ref = _one_point_masks(bundled, scenes)
    got = _one_point_masks(int8, scenes)
    ious = [float(v) for (m8, _), (m32, _) in zip(got, ref, strict=True) for v in mask_iou(m8, m32)]
    assert len(ious) >= 6
    assert np.mean(ious) >= BOUNDS["mask_iou_min"]
    score_err = max(
        float(np.abs(s8 - s32).max()) for (_, s8), (_, s32) in zip(got, ref, strict=True)
    )
    assert score_err < 0.05
    # int8 changes the output (the layers really run int8) but not by much
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        e32, e8 = bundled.image_encoder(x), int8.image_encoder(x)
    assert not torch.equal(e32, e8)
    assert float((e8 - e32).abs().max()) < 0.1 * float(e32.abs().max())


def test_state_dict_unchanged_and_round_trip_bit_exact(bundled):
    model = copy.deepcopy(bundled)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.image_encoder(x)
    segany.set_precision(model, "int8")
    assert precision_mod.model_precision(model) == "int8" and model.dtype == torch.float32
    sd = model.state_dict()
    assert list(sd) == list(before)
    assert all(torch.equal(sd[k], before[k]) for k in before)
    layers = [m for m in model.image_encoder.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 4 * len(model.image_encoder.blocks)  # qkv, proj, lin1, lin2
    assert isinstance(model.image_encoder.blocks[0].attn.qkv, Int8Linear)
    segany.set_precision(model, "fp32")
    assert not is_quantized(model)
    assert type(model.image_encoder.blocks[0].attn.qkv) is torch.nn.Linear
    with torch.inference_mode():
        assert torch.equal(model.image_encoder(x), ref)
    # state dicts load into an int8 model too, and the int8 weights follow them
    int8 = _int8(bundled)
    blank = copy.deepcopy(bundled)
    for p in blank.image_encoder.parameters():
        p.data.mul_(0.5)
    int8.load_state_dict(blank.state_dict())
    fresh = _int8(blank)
    with torch.inference_mode():
        assert torch.equal(int8.image_encoder(x), fresh.image_encoder(x))


def _mapping_of(tensor: torch.Tensor) -> tuple[str, int]:
    """The ``/proc/self/maps`` line holding ``tensor``'s data: (pathname, inode)."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            if lo <= address < hi:
                return (fields[5].strip() if len(fields) > 5 else ""), int(fields[4])
    raise AssertionError("no mapping holds the tensor")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_int8_weights_leave_memory_and_come_back(bundled, monkeypatch):
    """The int8 model's fp32 weights live in a mapped (file-backed, not anonymous) temporary
    file: same values, not resident; the way back and copies hold them in ordinary memory;
    where the file cannot be written they stay in memory, with a warning."""
    model = copy.deepcopy(bundled)
    qkv = model.image_encoder.blocks[0].attn.qkv
    weight, values = qkv.weight, qkv.weight.detach().clone()
    assert _mapping_of(weight)[1] == 0  # anonymous memory
    segany.set_precision(model, "int8")
    assert is_offloaded(model) and model.image_encoder.blocks[0].attn.qkv.weight is weight
    path, inode = _mapping_of(weight)
    assert inode != 0 and "(deleted)" in path  # an unlinked file
    assert torch.equal(weight, values)
    assert weight.untyped_storage().nbytes() == 4 * weight.numel()  # a storage of its own
    assert not is_offloaded(copy.deepcopy(model))
    segany.set_precision(model, "fp32")
    assert not is_offloaded(model) and _mapping_of(weight)[1] == 0
    assert torch.equal(model.image_encoder.blocks[0].attn.qkv.weight, values)

    def no_file(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("segany.quantize.tempfile.TemporaryFile", no_file)
    with pytest.warns(RuntimeWarning, match="kept in memory.*No space left"):
        segany.set_precision(model, "int8")
    assert is_quantized(model) and not is_offloaded(model)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    monkeypatch.undo()
    offloaded = _int8(bundled)
    assert is_offloaded(offloaded)  # offloaded or not, the same int8 model
    with torch.inference_mode():
        assert torch.equal(model.image_encoder(x), offloaded.image_encoder(x))


def test_int8_linear_agrees_with_its_reference():
    """7-bit weights agree with the fake-quantized reference on any x86 CPU; the scheme this
    CPU uses does too (8-bit weights only where VNNI cannot saturate)."""
    torch.manual_seed(0)
    engine, qmax_here = int8_scheme()
    for qmax in sorted({63, qmax_here}):
        linear = torch.nn.Linear(96, 80)
        layer = Int8Linear.from_linear(linear, engine=engine, qmax=qmax)
        assert layer.weight is linear.weight and layer.to_linear().weight is linear.weight
        x = torch.randn(3, 50, 96)
        with torch.no_grad():
            got, ref = layer(x), reference_linear(layer, x)
            exact = linear(x)
        assert got.shape == (3, 50, 80)
        quant_err = float((ref - exact).abs().max())
        assert quant_err > 0  # the reference does quantize
        assert float((got - ref).abs().max()) <= 0.35 * quant_err + 1e-4


def test_int8_refuses_what_it_cannot_run(tiny_model):
    int8 = _int8(tiny_model)
    layer = int8.image_encoder.blocks[0].attn.qkv
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.randn(2, layer.in_features, requires_grad=True))
    with torch.no_grad(), pytest.raises(RuntimeError, match="float32"):
        layer(torch.randn(2, layer.in_features, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="float32 on the CPU"):
        quantize_encoder(segany.set_precision(copy.deepcopy(tiny_model), "bf16"))
    # int8 -> bf16 goes through fp32: the bf16 model has no int8 layers left
    bf16 = segany.set_precision(copy.deepcopy(int8), "bf16")
    assert precision_mod.model_precision(bf16) == "bf16" and not is_quantized(bf16)


def test_cpu_classes(monkeypatch):
    monkeypatch.setenv(CPU_CLASS_ENV, "avx2")
    assert cpu_class() == "avx2"
    assert int8_scheme()[1] == 63  # no VNNI: 7-bit weights
    assert scheme_name("int8") == "int8/x86/w7"
    monkeypatch.setenv(CPU_CLASS_ENV, "avx512-vnni")
    monkeypatch.setattr("segany.quantize.cpu_vendor", lambda: "GenuineIntel")
    assert int8_scheme() == ("fbgemm", 127)
    assert scheme_name("int8") == "int8/fbgemm/w8" and scheme_name("bf16") == "bf16"
    monkeypatch.setattr("segany.quantize.cpu_vendor", lambda: "AuthenticAMD")
    assert int8_scheme() == ("x86", 127)  # fbgemm measured slower on AMD's AVX512
    assert int8_scheme("avx2") == ("x86", 63)
    monkeypatch.undo()
    monkeypatch.setenv(CPU_CLASS_ENV, "pentium")
    with pytest.raises(ValueError, match="SEGANY_CPU_CLASS must be one of"):
        cpu_class()
    monkeypatch.delenv(CPU_CLASS_ENV)
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    detected = cpu_class()
    if "avx512" not in flags and "avx2" in flags and "avx_vnni" not in flags:
        assert detected == "avx2"


def _report(model, *, accuracy_ok=True, speedup=1.3, cls="avx2"):
    entry = {
        "mask_iou_mean": 0.995 if accuracy_ok else 0.95, "mask_iou_min": 0.9,
        "miou_drop_1pt": 0.001, "miou_drop_5pt": 0.0,
    }  # fmt: skip
    speed = {"fp32": {"seconds": 1.0}, "int8": {"seconds": 1 / speedup, "speedup": speedup}}
    return precision_check.build_report(model, "tiny", {"int8": {**entry, "passes": True}},
                                        speed, "procedural:2")  # fmt: skip


def test_auto_picks_int8_only_with_a_passing_report(tiny_model, home, no_native_bf16):
    model = copy.deepcopy(tiny_model)
    name, why = choose_precision("auto", model)
    assert name == "fp32" and "not measured" in why and "bench-precision" in why

    precision_check.save_report(_report(model))
    assert (home / "precision" / f"{model_key(model)}.json").is_file()
    name, why = choose_precision("auto", model)
    assert name == "int8" and "1.30x faster" in why
    built = segany.build_sam(TINY, precision="fp32")
    built.load_state_dict(model.state_dict())
    assert not is_quantized(built)
    auto = segany.set_precision(built, "auto")
    assert precision_mod.model_precision(auto) == "int8"

    # a failing accuracy report wins over an older passing one (entries are replaced)
    precision_check.save_report(_report(model, accuracy_ok=False))
    name, why = choose_precision("auto", model)
    assert name == "fp32" and "failed the accuracy bound" in why
    precision_check.save_report(_report(model, speedup=0.98))
    name, why = choose_precision("auto", model)
    assert name == "fp32" and "0.98x" in why
    # another CPU class: neither its scheme's accuracy nor its speed is measured
    precision_check.save_report(_report(model))
    for cls in ("avx512-vnni", "avx-vnni"):
        ok, why = int8_verdict(model, cls)
        assert not ok and "not measured" in why


def test_auto_is_bf16_where_native_and_registry_is_fp32(tiny_model, home, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("auto", tiny_model)[0] == "bf16"
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision_check, "int8_verdict", lambda model, cls=None: (True, "test"))
    assert choose_precision("auto", tiny_model)[0] == "int8"
    assert choose_precision("fp32", tiny_model)[0] == "fp32"
    model = segany.sam_model_registry["vit_b"]()
    assert precision_mod.model_precision(model) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int4", tiny_model)


def test_generator_cli_and_onnx_report_precision(bundled, tmp_path, capsys):
    int8 = _int8(bundled)
    image, _ = sample_image(256, 192, 5)
    gen = segany.SamAutomaticMaskGenerator(int8, points_per_side=8, pred_iou_thresh=0.5,
                                           stability_score_thresh=0.5)  # fmt: skip
    assert gen.precision == "int8"
    records = gen.generate(image)
    assert records and all(r["segmentation"].shape == (192, 256) for r in records)

    from PIL import Image

    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    rc = main(["segment", str(path), "--point", "100,80", "--precision", "int8",
               "--device", "cpu", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0 and "(int8 on cpu)" in err
    assert main(["segment", str(path), "--point", "1,1", "--precision", "int4"]) == 2

    onnx_dir = tmp_path / "onnx"
    segany.export_onnx(int8, onnx_dir)  # exported from an fp32 copy; the model stays int8
    assert is_quantized(int8)
    assert segany.OnnxPredictor(onnx_dir).precision == "fp32"
    rc = main(["segment", str(path), "--point", "100,80", "--backend", "onnx", "--model",
               str(onnx_dir), "--precision", "int8", "--out", str(tmp_path / "o2")])  # fmt: skip
    assert rc == 3 and "int8" in capsys.readouterr().err  # no int8 files in this export
    rc = main(["segment", str(path), "--point", "100,80", "--backend", "onnx", "--model",
               str(onnx_dir), "--precision", "bf16"])  # fmt: skip
    assert rc == 2 and "fp32 or int8" in capsys.readouterr().err


def test_bench_precision_writes_the_report_auto_reads(home, no_native_bf16, capsys):
    rc = main(["bench-precision", "--data", "procedural:2:1", "--max-images", "2",
               "--amg-images", "1", "--amg-pred-iou-thresh", "0.5", "--no-speed", "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "| int8 |" in out
    files = list((home / "precision").glob("*.json"))
    assert len(files) == 1
    report = json.loads(files[0].read_text())
    entry = report["accuracy"]["int8/x86/w7"]
    assert entry["images"] == 2 and entry["prompts"] > 0
    assert 0.9 <= entry["mask_iou_mean"] <= 1.0
    assert set(entry["miou_1pt"]) == {"fp32", "int8"} and entry["amg"]["images"] == 1
    assert report["speed"] == {}
    model = segany.load_model("segany_tiny", precision="fp32", device="cpu")
    ok, why = int8_verdict(model)
    assert not ok and ("speed" in why or "failed" in why)
    assert main(["bench-precision", "--amg-images", "-1"]) == 2
    assert main(["bench-precision", "--data", "nonsense:3"]) == 2
    assert main(["bench-precision", "--model", str(home / "missing.pth")]) == 3


def test_info_says_what_auto_picks(capsys, home):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU class:" in out and "precision auto: " in out and "segany_tiny" in out


def test_the_bundled_model_ships_its_report(bundled, home):
    """The shipped report belongs to the bundled weights (retraining the model means running
    ``segany bench-precision --out segany/models/segany_tiny.precision.json`` again)."""
    report, source = precision_check.find_report(bundled)
    assert report is not None and source == "the report shipped with segany"
    entry = report["accuracy"]["int8/x86/w7"]
    assert entry["passes"] and entry["mask_iou_mean"] >= BOUNDS["mask_iou_min"]
    assert set(report["speed"]) >= {"avx2"}
