"""ONNX export (``segany.export``) and the torch-free ONNX Runtime predictor
(``segany.runtime.OnnxPredictor``): graphs are valid ONNX, ONNX Runtime agrees with the PyTorch
model (tiny config end to end; vit_b-sized random weights for the decoder) and with the decoder
exported by the official package, the predictor runs where torch cannot be imported, int8
quantization is measured, and the CLI works."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import segany  # noqa: E402
from segany.cli.main import main  # noqa: E402
from segany.export import export_onnx  # noqa: E402
from segany.export import files as export_files  # noqa: E402
from segany.export.resize import preprocess_model  # noqa: E402
from segany.io.embedding import model_fingerprint  # noqa: E402
from segany.io.onnx_manifest import (  # noqa: E402
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DECODER_PROMPT_INPUTS,
    DECODER_PROMPT_OUTPUTS,
    DECODER_SPLIT_INPUTS,
)
from tests.helpers import (  # noqa: E402
    IOU_TOL,
    TINY,
    assert_masks_match,
    assert_same_prediction,
    onnx_predictor,
    quiet_options,
    random_image,
    randomize_,
    run_suite,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 90, 120  # tiny test image (not square, smaller than img_size 128)


def official_decoder_onnx(official, path: Path, return_single_mask: bool = False) -> Path:
    """The decoder as the official ``scripts/export_onnx_model.py`` exports it."""
    from segment_anything.utils.onnx import SamOnnxModel

    wrapper = SamOnnxModel(official, return_single_mask=return_single_mask)
    pe = official.prompt_encoder
    c, (he, we) = pe.embed_dim, pe.image_embedding_size
    args = (
        torch.randn(1, c, he, we),
        torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        torch.randint(0, 4, (1, 5), dtype=torch.float),
        torch.randn(1, 1, 4 * he, 4 * we),
        torch.tensor([1.0]),
        torch.tensor([1500.0, 2250.0]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return path


def decoder_feeds(c: int, he: int, img_size: int, orig_sizes: list[tuple[int, int]]) -> list:
    """Raw decoder inputs (input frame) as official clients send them."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1, c, he, he)).astype(np.float32)
    mask = (3 * rng.standard_normal((1, 1, 4 * he, 4 * he))).astype(np.float32)
    prompts = [
        ([[0.4, 0.5], [0, 0]], [1, -1]),  # one point + padding, as the web demo sends it
        ([[0.2, 0.3], [0.7, 0.1], [0.5, 0.5], [0, 0]], [1, 0, 1, -1]),
        ([[0.1, 0.2], [0.8, 0.7]], [2, 3]),  # a box
        ([[0.5, 0.4], [0.1, 0.2], [0.8, 0.7]], [1, 2, 3]),  # point + box
    ]
    feeds = []
    for i, (coords, labels) in enumerate(prompts):
        for has_mask in (0.0, 1.0):
            h, w = orig_sizes[i % len(orig_sizes)]
            feeds.append(
                {
                    "image_embeddings": emb,
                    "point_coords": (np.array([coords]) * img_size).astype(np.float32),
                    "point_labels": np.array([labels], np.float32),
                    "mask_input": mask if has_mask else np.zeros_like(mask),
                    "has_mask_input": np.array([has_mask], np.float32),
                    "orig_im_size": np.array([h, w], np.float32),
                }
            )
    return feeds


def session(path: Path):
    return ort.InferenceSession(
        str(path), sess_options=quiet_options(), providers=["CPUExecutionProvider"]
    )


class SplitDecoder:
    """``decoder_image.onnx`` then ``decoder_prompt.onnx`` behind ``decoder.onnx``'s ``run``
    (all outputs): ``[None, iou_predictions, low_res_masks]``, no upscaled masks."""

    def __init__(self, folder: Path) -> None:
        self.image = session(folder / "decoder_image.onnx")
        self.prompt = session(folder / "decoder_prompt.onnx")

    def run(self, output_names, feed: dict) -> list:
        assert output_names is None
        split = self.image.run(None, {"image_embeddings": feed["image_embeddings"]})
        feeds = {**feed, **dict(zip(DECODER_SPLIT_INPUTS, split, strict=True))}
        iou, low_res = self.prompt.run(None, {n: feeds[n] for n in DECODER_PROMPT_INPUTS})
        return [None, iou, low_res]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_export(tiny_pair, tmp_path_factory):
    """The tiny model exported with encoder (raw pixels in), decoder and int8 versions."""
    out = tmp_path_factory.mktemp("onnx_tiny")
    export_onnx(tiny_pair[1], out, quantize=True, name="tiny")
    return out


@pytest.fixture(scope="module")
def vit_b_export(vit_b_pair, tmp_path_factory):
    """vit_b-sized random weights exported (encoder with in-graph preprocessing, decoder), and
    the official decoder export of the same weights."""
    official, model = vit_b_pair
    out = tmp_path_factory.mktemp("onnx_vit_b")
    export_onnx(model, out, name="vit_b_random")
    official_decoder_onnx(official, out / "official_decoder.onnx")
    return out


# ---------------------------------------------------------------------------- files


def test_export_writes_valid_graphs_and_manifest(tiny_export, tiny_model):
    names = sorted(p.name for p in tiny_export.iterdir())
    assert names == [
        "decoder.int8.onnx",
        "decoder.onnx",
        "decoder_image.onnx",
        "decoder_prompt.onnx",
        "encoder.int8.onnx",
        "encoder.onnx",
        "manifest.json",
        "quantization_report.json",
    ]
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["model"] == "tiny"
    assert manifest["img_size"] == 128 and manifest["opset"] == 17
    assert manifest["segany_version"] == segany.__version__
    assert manifest["model_fingerprint"] == model_fingerprint(tiny_model)
    assert manifest["pixel_mean"] == pytest.approx(list(TINY.pixel_mean))
    assert manifest["pixel_std"] == pytest.approx(list(TINY.pixel_std))
    assert manifest["embedding_shape"] == [1, 32, 16, 16]
    files = manifest["files"]
    assert {k: v["precision"] for k, v in files.items()} == {
        "decoder": "fp32",
        "decoder_image": "fp32",
        "decoder_prompt": "fp32",
        "encoder": "fp32",
        "decoder_int8": "int8",
        "encoder_int8": "int8",
    }
    for entry in files.values():
        path = tiny_export / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert [i.name for i in proto.graph.input] == [i["name"] for i in entry["inputs"]]
        assert [o.name for o in proto.graph.output] == [o["name"] for o in entry["outputs"]]
    dec = files["decoder"]
    assert [i["name"] for i in dec["inputs"]] == list(DECODER_INPUTS)
    assert [o["name"] for o in dec["outputs"]] == list(DECODER_OUTPUTS)
    shapes = {i["name"]: i["shape"] for i in dec["inputs"]}
    assert shapes["image_embeddings"] == [1, 32, 16, 16]  # from the config, not 256x64x64
    assert shapes["point_coords"] == [1, "num_points", 2]
    assert shapes["mask_input"] == [1, 1, 64, 64]
    enc = files["encoder"]["inputs"]
    assert enc == [{"name": "image", "dtype": "uint8", "shape": ["height", "width", 3]}]
    # the split decoder: heads x image tokens x head width
    attn = tiny_model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    shape = [attn.num_heads, 16 * 16, attn.internal_dim // attn.num_heads]
    image_half = files["decoder_image"]
    assert [i["name"] for i in image_half["inputs"]] == ["image_embeddings"]
    assert (
        [(o["name"], o["shape"]) for o in image_half["outputs"]]
        == [
            ("image_tokens", [1, 16 * 16, 32]),  # channels-last
            *((name, shape) for name in DECODER_SPLIT_INPUTS[1:]),
        ]
    )
    prompt_half = files["decoder_prompt"]
    assert [i["name"] for i in prompt_half["inputs"]] == [
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        *DECODER_SPLIT_INPUTS,
    ]
    assert [o["name"] for o in prompt_half["outputs"]] == list(DECODER_PROMPT_OUTPUTS)
    assert [o["shape"] for o in prompt_half["outputs"]] == [[1, 4], [1, 4, 64, 64]]


def test_decoder_interface_equals_official(tiny_pair, tiny_export, tmp_path):
    ours = session(tiny_export / "decoder.onnx")
    theirs = session(official_decoder_onnx(tiny_pair[0], tmp_path / "official.onnx"))
    for a, b in (
        (ours.get_inputs(), theirs.get_inputs()),
        (ours.get_outputs(), theirs.get_outputs()),
    ):
        assert [(x.name, x.type) for x in a] == [(x.name, x.type) for x in b]
        assert [len(x.shape) for x in a] == [len(x.shape) for x in b]


# ---------------------------------------------------------------------------- vs PyTorch


def test_tiny_onnx_predictor_matches_torch(tiny_model, tiny_export):
    """End to end on the tiny config: raw pixels through encoder.onnx (in-graph resize) and
    decoder.onnx vs SamPredictor in fp32."""
    img = random_image(H, W, seed=3)
    ref = segany.SamPredictor(tiny_model)
    ref.set_image(img)
    ours = onnx_predictor(tiny_export)
    ours.set_image(img)
    assert ours.original_size == ref.original_size and ours.input_size == ref.input_size
    np.testing.assert_allclose(
        ours.get_image_embedding(), ref.get_image_embedding().numpy(), atol=1e-4, rtol=0
    )
    run_suite(ours, ref, H, W)


@pytest.mark.parametrize("hw", [(128, 128), (40, 200), (300, 170)])
def test_tiny_encoder_matches_torch_on_other_sizes(tiny_model, tiny_export, hw):
    img = random_image(*hw, seed=hw[0])
    ref = segany.SamPredictor(tiny_model)
    ref.set_image(img)
    ours = onnx_predictor(tiny_export)
    ours.set_image(img)
    np.testing.assert_allclose(
        ours.get_image_embedding(), ref.get_image_embedding().numpy(), atol=1e-4, rtol=0
    )
    a = ours.predict(point_coords=[[hw[1] / 2, hw[0] / 3]], point_labels=[1], return_logits=True)
    b = ref.predict(point_coords=[[hw[1] / 2, hw[0] / 3]], point_labels=[1], return_logits=True)
    assert_same_prediction(a, b)


@pytest.mark.parametrize(
    "hw", [(768, 1024), (480, 640), (3000, 4000), (333, 517), (100, 90), (37, 1500), (1, 1)]
)
def test_in_graph_resize_is_bit_exact_with_pillow(hw):
    """The encoder's in-graph resize reproduces Pillow's (ResizeLongestSide.apply_image)
    exactly, and so does the normalized, padded tensor the encoder sees."""
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    sess = ort.InferenceSession(
        preprocess_model(1024, mean, std).SerializeToString(),
        sess_options=quiet_options(),
        providers=["CPUExecutionProvider"],
    )
    img = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    images, resized = sess.run(None, {"image": img})
    ref = segany.ResizeLongestSide(1024).apply_image(img)
    np.testing.assert_array_equal(resized, ref)
    x = torch.as_tensor(ref).permute(2, 0, 1)[None].float()
    model_input = segany.transforms.normalize_and_pad(
        x, torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1), 1024
    )
    np.testing.assert_array_equal(images, model_input.numpy())


@pytest.mark.slow
def test_vit_b_encoder_matches_torch(vit_b_pair, vit_b_export):
    """vit_b-sized encoder.onnx on raw pixels (in-graph resize, normalization, padding) vs
    SamPredictor.set_image in fp32, then one prompt end to end."""
    _, model = vit_b_pair
    img = random_image(480, 640, seed=1)
    ours = onnx_predictor(vit_b_export)
    ours.set_image(img)
    ref = segany.SamPredictor(model)
    ref.set_image(img)
    emb = ours.get_image_embedding()
    assert emb.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(emb, ref.get_image_embedding().numpy(), atol=1e-4, rtol=0)
    prompt = {"point_coords": np.array([[250.0, 300.0]]), "point_labels": np.array([1])}
    assert_same_prediction(
        ours.predict(**prompt, return_logits=True), ref.predict(**prompt, return_logits=True)
    )


@pytest.mark.slow
def test_vit_b_decoder_matches_torch(vit_b_pair, vit_b_export, tmp_path):
    """vit_b-sized random weights: decoder.onnx through OnnxPredictor vs SamPredictor on the
    same embedding (handed over through an embedding file, which also checks the format)."""
    _, model = vit_b_pair
    ours = onnx_predictor(vit_b_export)
    for h, w in [(480, 640), (1500, 700)]:
        rng = np.random.default_rng(h)
        ours.set_embedding(rng.standard_normal((1, 256, 64, 64)).astype(np.float32), (h, w))
        ours.save_embedding(tmp_path / "emb.safetensors")
        ref = segany.SamPredictor(model)
        ref.load_embedding(tmp_path / "emb.safetensors")  # same model fingerprint
        run_suite(ours, ref, h, w)


def compare_with_official(ours, official, official_session, feeds_for, single=False) -> None:
    """Our decoder.onnx vs the official one on the same raw inputs.

    The official ``segment-anything`` 1.0 export bakes the crop to the padded frame into the
    graph for the aspect ratio of its dummy ``orig_im_size`` (1500x2250), so the official ONNX
    file is compared on images of that aspect ratio, and on any other size our file is compared with the official ``SamOnnxModel`` module
    it was traced from."""
    from segment_anything.utils.onnx import SamOnnxModel

    module = SamOnnxModel(official, return_single_mask=single)
    for sizes, reference in ((feeds_for[0], "onnx"), (feeds_for[1], "module")):
        for feed in sizes:
            a = ours.run(None, feed)
            if reference == "onnx":
                b = official_session.run(None, feed)
            else:
                with torch.no_grad():
                    b = [t.numpy() for t in module(*(torch.as_tensor(v) for v in feed.values()))]
            h, w = feed["orig_im_size"].astype(int)
            assert b[0].shape == (1, 1 if single else 4, h, w)
            assert a[2].shape == b[2].shape
            np.testing.assert_allclose(a[1], b[1], atol=IOU_TOL, rtol=0)
            np.testing.assert_allclose(a[2], b[2], atol=1e-3, rtol=1e-3)
            if a[0] is not None:  # the split decoder gives no upscaled masks
                assert a[0].shape == b[0].shape
                assert_masks_match(a[0], b[0])


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True])
def test_vit_b_decoder_matches_official_export(vit_b_pair, vit_b_export, split):
    ours = SplitDecoder(vit_b_export) if split else session(vit_b_export / "decoder.onnx")
    theirs = session(vit_b_export / "official_decoder.onnx")
    feeds = (
        decoder_feeds(256, 64, 1024, [(1500, 2250), (600, 900), (300, 450)]),
        decoder_feeds(256, 64, 1024, [(768, 1024), (1200, 700), (300, 200)]),
    )
    compare_with_official(ours, vit_b_pair[0], theirs, feeds)


@pytest.mark.parametrize(
    "single, split", [(False, False), (True, False), (False, True), (True, True)]
)
def test_tiny_decoder_matches_official_export(tiny_pair, tmp_path, single, split):
    """decoder.onnx, and the split decoder (image half, then prompt half), against the official
    export of the same random weights: points, boxes, with and without a mask input."""
    official, model = tiny_pair
    export_onnx(model, tmp_path, encoder=False, return_single_mask=single)
    ours = SplitDecoder(tmp_path) if split else session(tmp_path / "decoder.onnx")
    theirs = session(official_decoder_onnx(official, tmp_path / "official.onnx", single))
    feeds = (
        decoder_feeds(32, 16, 128, [(150, 225), (60, 90), (1500, 2250)]),
        decoder_feeds(32, 16, 128, [(96, 128), (90, 120), (300, 170)]),
    )
    compare_with_official(ours, official, theirs, feeds, single)


def test_batched_prompts_equal_one_by_one(tiny_model, tiny_export):
    img = random_image(H, W, seed=5)
    ours = onnx_predictor(tiny_export)
    ours.set_image(img)
    ref = segany.SamPredictor(tiny_model)
    ref.set_image(img)
    boxes = np.array([[10, 10, 60, 50], [30, 20, 110, 80], [0, 0, 120, 90]])
    m, s, lo = ours.predict(box=boxes, multimask_output=False, return_logits=True)
    assert m.shape == (3, 1, H, W) and s.shape == (3, 1) and lo.shape == (3, 1, 64, 64)
    for i, b in enumerate(boxes):
        one = ours.predict(box=b, multimask_output=False, return_logits=True)
        np.testing.assert_array_equal(m[i], one[0])
    assert_same_prediction(
        (m, s, lo), ref.predict(box=boxes, multimask_output=False, return_logits=True)
    )
    pts = [np.array([[50, 60]]), np.array([[80, 30], [20, 40]])]
    labels = [np.array([1]), np.array([1, 0])]
    a = ours.predict(point_coords=pts, point_labels=labels, return_logits=True)
    b = ref.predict(point_coords=pts, point_labels=labels, return_logits=True)
    assert a[0].shape == (2, 3, H, W)
    assert_same_prediction(a, b)
    masks, _, _ = ours.predict(point_coords=pts, point_labels=labels)
    assert masks.dtype == np.bool_
    np.testing.assert_array_equal(masks, a[0] > 0)


BAD_PROMPTS = [
    {},
    {"point_coords": [[10, 10]]},
    {"point_labels": [1]},
    {"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)},
    {"point_coords": [[10, 10, 3]], "point_labels": [1]},
    {"point_coords": [[10, 10]], "point_labels": [1, 0]},
    {"point_coords": [[np.nan, 10]], "point_labels": [1]},
    {"point_coords": [[500, 10]], "point_labels": [1]},
    {"point_coords": [[10, 10]], "point_labels": [7]},
    {"box": [10, 10, 5, 50]},
    {"box": [10, 10, 50]},
    {"box": [-5, 0, 20, 20]},
    {
        "box": [[0, 0, 10, 10], [0, 0, 20, 20]],
        "point_coords": np.zeros((3, 1, 2)),
        "point_labels": np.ones((3, 1)),
    },
    {"mask_input": np.zeros((1, 32, 32))},
    {"mask_input": np.full((1, 64, 64), np.inf)},
    {"point_coords": "abc", "point_labels": [1]},
]


@pytest.mark.parametrize("prompt", BAD_PROMPTS)
def test_bad_prompts_raise_value_error_like_sam_predictor(tiny_model, tiny_export, prompt):
    img = random_image(H, W, seed=1)
    ours = onnx_predictor(tiny_export)
    ours.set_image(img)
    ref = segany.SamPredictor(tiny_model)
    ref.set_image(img)
    with pytest.raises(ValueError) as ours_err:
        ours.predict(**prompt)
    with pytest.raises(ValueError) as ref_err:
        ref.predict(**prompt)
    assert str(ours_err.value).split(":")[0] == str(ref_err.value).split(":")[0]


def test_predict_before_set_image_and_reset(tiny_export):
    p = onnx_predictor(tiny_export)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=[[1, 1]], point_labels=[1])
    p.set_image(random_image(H, W, seed=2))
    assert p.is_image_set
    p.reset_image()
    with pytest.raises(RuntimeError):
        p.get_image_embedding()


def test_set_image_accepts_what_sam_predictor_accepts(tiny_model, tiny_export):
    from PIL import Image

    img = random_image(H, W, seed=4)
    ours, ref = onnx_predictor(tiny_export), segany.SamPredictor(tiny_model)
    for image, fmt in [(img[:, :, ::-1].copy(), "BGR"), (Image.fromarray(img).convert("L"), "RGB")]:
        ours.set_image(image, image_format=fmt)
        ref.set_image(image, image_format=fmt)
        np.testing.assert_allclose(
            ours.get_image_embedding(), ref.get_image_embedding().numpy(), atol=1e-4
        )
    with pytest.raises(ValueError, match="image"):
        ours.set_image(np.zeros((0, 5, 3), np.uint8))


# ---------------------------------------------------------------------------- embeddings


def test_embedding_files_are_shared_with_sam_predictor(tiny_model, tiny_export, tmp_path):
    img = random_image(H, W, seed=6)
    ref = segany.SamPredictor(tiny_model)
    ref.set_image(img)
    ref.save_embedding(tmp_path / "torch.safetensors")
    ours = onnx_predictor(tiny_export)
    ours.load_embedding(tmp_path / "torch.safetensors")
    assert ours.original_size == (H, W) and ours.input_size == ref.input_size
    np.testing.assert_array_equal(ours.get_image_embedding(), ref.get_image_embedding().numpy())
    ours.set_image(img)
    ours.save_embedding(tmp_path / "onnx.safetensors")
    back = segany.SamPredictor(tiny_model)
    back.load_embedding(tmp_path / "onnx.safetensors")
    np.testing.assert_array_equal(back.get_image_embedding().numpy(), ours.get_image_embedding())


def test_bf16_embedding_file_and_foreign_model(tiny_model, tiny_export, tmp_path):
    import copy

    bf16 = segany.set_precision(copy.deepcopy(tiny_model), "bf16")
    p = segany.SamPredictor(bf16)
    p.set_image(random_image(H, W, seed=7))
    p.save_embedding(tmp_path / "bf16.safetensors")
    ours = onnx_predictor(tiny_export)
    with pytest.raises(ValueError, match="different model"):
        ours.load_embedding(tmp_path / "bf16.safetensors")  # bf16 weights: another fingerprint
    ours.load_embedding(tmp_path / "bf16.safetensors", check_model=False)
    np.testing.assert_array_equal(
        ours.get_image_embedding(), p.get_image_embedding().float().numpy()
    )
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a segany embedding file"):
        ours.load_embedding(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------- torch-free

TORCH_FREE_SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
sys.modules["torchvision"] = None
import numpy as np
from segany.runtime import OnnxPredictor
try:
    import torch  # noqa: F401
    raise SystemExit("torch importable")
except ImportError:
    pass
d, emb = sys.argv[1], sys.argv[2]
p = OnnxPredictor(d)
rng = np.random.default_rng(0)
p.set_image(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
masks, scores, low = p.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]))
bm, bs, bl = p.predict(box=np.array([[10, 10, 60, 50], [30, 20, 110, 80]]), multimask_output=False)
p.save_embedding(emb)
q = OnnxPredictor(d, quantized=True)
q.load_embedding(emb)
qm, qs, ql = q.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]))
try:
    p.predict(point_coords=np.array([[500, 40]]), point_labels=np.array([1]))
    error = None
except ValueError as e:
    error = str(e)
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch")
print(json.dumps({"masks": list(masks.shape), "dtype": str(masks.dtype), "scores": scores.tolist(),
                  "boxes": list(bm.shape), "int8": list(qm.shape), "error": error, "torch": loaded}))
"""


def test_onnx_predictor_runs_without_torch(tiny_export, tmp_path):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT, str(tiny_export), str(tmp_path / "e.st")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["masks"] == [3, H, W] and out["dtype"] == "bool"
    assert out["boxes"] == [2, 1, H, W] and out["int8"] == [3, H, W]
    assert "outside the image" in out["error"]
    assert out["torch"] == []
    # same numbers as in this (torch-enabled) process
    p = onnx_predictor(tiny_export)
    p.set_image(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    _, scores, _ = p.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]))
    np.testing.assert_allclose(out["scores"], scores, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- int8


def test_int8_files_and_report(tiny_export, capsys):
    report = json.loads((tiny_export / "quantization_report.json").read_text())
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["quantization_report"]["file"] == "quantization_report.json"
    parts = report["parts"]
    assert set(parts) == {"int8", "decoder_int8", "encoder_int8"}
    for stats in parts.values():
        assert stats["masks"] > 0
        assert 0.0 <= stats["mean_mask_iou"] <= 1.0
    iou = report["summary"]["mean_mask_iou"]
    err = report["summary"]["mean_abs_iou_score_error"]
    logit = report["summary"]["mean_relative_logit_error"]
    with capsys.disabled():
        print(
            f"\n[int8 vs fp32, tiny random weights] mean mask IoU {iou:.3f}, "
            f"mean |IoU-score error| {err:.4f}, relative low-res logit error {logit:.3f}; parts: "
            + ", ".join(f"{k} {v['mean_mask_iou']:.3f}" for k, v in parts.items())
        )
    # A smoke bound only: random tiny weights say little about the trained model's figure, but
    # broken quantization (wrong scales, lost tensors) lands far below it.
    assert iou > 0.5 and err < 0.2 and logit < 0.5
    q = onnx_predictor(tiny_export, quantized=True)
    q.set_image(random_image(H, W, seed=8))
    masks, scores, _ = q.predict(box=np.array([10, 10, 80, 60]))
    assert masks.shape == (3, H, W) and np.isfinite(scores).all()


# ---------------------------------------------------------------------------- export options


def test_external_data_no_preprocess_and_opset(tiny_model, tmp_path, monkeypatch):
    """Weights over the threshold go to one external data file; the encoder without
    preprocessing takes the padded tensor; other opsets export and run."""
    monkeypatch.setattr(export_files, "EXTERNAL_DATA_THRESHOLD", 0)
    export_onnx(tiny_model, tmp_path, encoder_preprocess=False, opset=20, quantize=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for key, entry in manifest["files"].items():
        (data,) = entry["external_data"]
        assert data["file"] == entry["file"] + ".data", key
        path = tmp_path / data["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == data["sha256"]
        onnx.checker.check_model(str(tmp_path / entry["file"]))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".data") == [
        "decoder.int8.onnx.data",
        "decoder.onnx.data",
        "decoder_image.onnx.data",
        "decoder_prompt.onnx.data",
        "encoder.int8.onnx.data",
        "encoder.onnx.data",
    ]
    enc = manifest["files"]["encoder"]
    assert (tmp_path / "encoder.onnx.data").stat().st_size > 100_000
    assert enc["inputs"][0] == {"name": "images", "dtype": "float32", "shape": [1, 3, 128, 128]}
    assert manifest["opset"] == 20 and not manifest["encoder_preprocess"]
    img = random_image(H, W, seed=9)
    ours, ref = onnx_predictor(tmp_path), segany.SamPredictor(tiny_model)
    ours.set_image(img)
    ref.set_image(img)
    np.testing.assert_allclose(
        ours.get_image_embedding(), ref.get_image_embedding().numpy(), atol=1e-4
    )
    run_suite(ours, ref, H, W)
    q = onnx_predictor(tmp_path, quantized=True)
    q.set_image(img)
    assert q.predict(box=np.array([10, 10, 80, 60]))[0].shape == (3, H, W)


def test_chunked_global_attention(tiny_model, tmp_path, monkeypatch):
    """Global attention is exported in query blocks (vit_b: 4 blocks of 1024 of 4096 tokens);
    here 256 tokens in blocks of 100, the last one shorter."""
    from segany.modeling import image_encoder

    monkeypatch.setattr(image_encoder, "BLOCKED_QUERY_BLOCK", 100)
    export_onnx(tiny_model, tmp_path)
    proto = onnx.load(str(tmp_path / "encoder.onnx"))
    softmax = sum(n.op_type == "Softmax" for n in proto.graph.node)
    n_global = len(TINY.image_encoder.global_attn_indexes)
    assert softmax == (TINY.image_encoder.depth - n_global) + 3 * n_global  # ceil(256 / 100)
    img = random_image(H, W, seed=10)
    ours, ref = onnx_predictor(tmp_path), segany.SamPredictor(tiny_model)
    ours.set_image(img)
    ref.set_image(img)
    np.testing.assert_allclose(
        ours.get_image_embedding(), ref.get_image_embedding().numpy(), atol=1e-4
    )
    # the model handed to export_onnx is left as it was
    assert all("forward" not in vars(b.attn) for b in tiny_model.image_encoder.blocks)
    assert all(b.attn.backend == "fast" for b in tiny_model.image_encoder.blocks)


def test_gelu_approximate_and_bf16_model(tiny_model, tmp_path):
    import copy

    bf16 = segany.set_precision(copy.deepcopy(tiny_model), "bf16")
    export_onnx(bf16, tmp_path, gelu_approximate=True, encoder=False)
    proto = onnx.load(str(tmp_path / "decoder.onnx"))
    assert not any(n.op_type == "Erf" for n in proto.graph.node)
    assert bf16.mask_decoder.iou_token.weight.dtype == torch.bfloat16  # input left untouched
    assert all(m.approximate == "none" for m in bf16.modules() if isinstance(m, torch.nn.GELU))
    p = onnx_predictor(tmp_path)
    p.set_embedding(np.random.default_rng(0).standard_normal((1, 32, 16, 16)), (H, W))
    masks, scores, _ = p.predict(point_coords=[[30, 40]], point_labels=[1])
    assert masks.shape == (3, H, W) and np.isfinite(scores).all()
    with pytest.raises(FileNotFoundError, match="no image encoder"):
        p.set_image(random_image(H, W))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tiny_model, tmp_path, opset=9)


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("onnx_cli")
    ckpt = d / "tiny.pth"
    torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), ckpt)
    img = d / "img.png"
    Image.fromarray(random_image(H, W, seed=3)).save(img)
    return {"ckpt": ckpt, "img": img}


def test_cli_export_then_segment_with_onnx_backend(cli_files, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export-onnx", "--model", str(cli_files["ckpt"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "manifest.json")
    assert "exporting decoder" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "decoder_image.onnx",
        "decoder_prompt.onnx",
        "encoder.onnx",
        "manifest.json",
    ]
    assert json.loads((out / "manifest.json").read_text())["model"] == "tiny"

    seg_onnx, seg_torch = tmp_path / "seg_onnx", tmp_path / "seg_torch"
    prompt = ["--point", "30,40", "--box", "10,10,100,80"]
    img = str(cli_files["img"])
    assert (
        main(
            [
                "segment",
                img,
                *prompt,
                "--backend",
                "onnx",
                "--model",
                str(out),
                "--out",
                str(seg_onnx),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "segment",
                img,
                *prompt,
                "--model",
                str(cli_files["ckpt"]),
                "--precision",
                "fp32",
                "--out",
                str(seg_torch),
            ]
        )
        == 0
    )
    a = json.loads((seg_onnx / "scores.json").read_text())
    b = json.loads((seg_torch / "scores.json").read_text())
    np.testing.assert_allclose(a["scores"], b["scores"], atol=IOU_TOL)
    assert [m["file"] for m in a["masks"]] == [m["file"] for m in b["masks"]]
    # the embedding cache works with the onnx backend too
    emb = tmp_path / "e.safetensors"
    for _ in range(2):
        assert (
            main(
                [
                    "segment",
                    img,
                    "--point",
                    "30,40",
                    "--backend",
                    "onnx",
                    "--model",
                    str(out),
                    "--out",
                    str(seg_onnx),
                    "--embedding",
                    str(emb),
                ]
            )
            == 0
        )
    assert emb.is_file()


def test_cli_export_options(cli_files, tmp_path):
    out = tmp_path / "e"
    args = [
        "export-onnx",
        "--model",
        str(cli_files["ckpt"]),
        "--out",
        str(out),
        "--opset",
        "18",
        "--no-encoder",
        "--return-single-mask",
        "--gelu-approximate",
    ]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == 18 and manifest["return_single_mask"]
    assert sorted(manifest["files"]) == ["decoder", "decoder_image", "decoder_prompt"]


@pytest.mark.parametrize(
    "extra, code, needle",
    [
        (["--opset", "9"], 2, "--opset must be in"),
        (["--opset", "x"], 2, "invalid int value"),
        (["--bogus"], 2, "unrecognized arguments"),
        (["--no-encoder", "--no-preprocess"], 2, "--no-preprocess"),
    ],
)
def test_cli_export_bad_args_exit_2(cli_files, tmp_path, capsys, extra, code, needle):
    args = ["export-onnx", "--model", str(cli_files["ckpt"]), "--out", str(tmp_path / "o")]
    assert main(args + extra) == code
    assert needle in capsys.readouterr().err


def test_cli_export_errors(cli_files, tmp_path, capsys):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert main(["export-onnx", "--model", str(cli_files["ckpt"]), "--out", str(not_dir)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert (
        main(
            ["export-onnx", "--model", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")]
        )
        == 3
    )
    assert "not found" in capsys.readouterr().err
    seg = ["segment", str(cli_files["img"]), "--point", "30,40", "--backend", "onnx"]
    assert main([*seg, "--model", str(cli_files["ckpt"]), "--out", str(tmp_path / "s")]) == 3
    assert "export-onnx" in capsys.readouterr().err
    assert main([*seg, "--model", str(tmp_path), "--out", str(tmp_path / "s")]) == 3
    assert "manifest.json" in capsys.readouterr().err
    assert main([*seg[:-1], "tensorrt", "--out", str(tmp_path / "s")]) == 2
