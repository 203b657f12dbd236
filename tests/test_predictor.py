"""Predictor behaviour on a tiny model: shapes, batching == per-item, embedding files,
image conversions and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.io.image import to_rgb_uint8
from tests.helpers import random_image

H, W = 90, 120


@pytest.fixture
def predictor(tiny_model):
    p = segany.SamPredictor(tiny_model)
    p.set_image(random_image(H, W, seed=5))
    return p


def test_output_shapes_and_types(predictor):
    masks, scores, low = predictor.predict(point_coords=[[30, 40]], point_labels=[1])
    assert masks.shape == (3, H, W) and masks.dtype == np.bool_
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert low.shape == (3, 64, 64)
    masks, scores, low = predictor.predict(
        point_coords=[[30, 40]], point_labels=[1], multimask_output=False, return_logits=True
    )
    assert masks.shape == (1, H, W) and masks.dtype == np.float32
    assert predictor.get_image_embedding().shape == (1, 32, 16, 16)
    assert predictor.original_size == (H, W) and predictor.input_size == (96, 128)


def test_several_boxes_equal_one_by_one(predictor):
    boxes = np.array([[0, 0, 60, 45], [10, 20, 119, 89], [50, 5, 70, 80]], float)
    masks, scores, low = predictor.predict(box=boxes)
    assert masks.shape == (3, 3, H, W)
    for i, b in enumerate(boxes):
        m, s, lo = predictor.predict(box=b)
        np.testing.assert_array_equal(masks[i], m)
        np.testing.assert_allclose(scores[i], s, atol=1e-6)
        np.testing.assert_allclose(low[i], lo, atol=1e-5)


def test_ragged_points_without_padding(predictor):
    coords = [np.array([[10, 10]]), np.array([[20, 30], [60, 50]]), np.array([[100, 80]])]
    labels = [np.array([1]), np.array([1, 0]), np.array([1])]
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels)
    assert masks.shape == (3, 3, H, W)
    for i in range(3):
        m, s, _ = predictor.predict(point_coords=coords[i], point_labels=labels[i])
        np.testing.assert_array_equal(masks[i], m)
        np.testing.assert_allclose(scores[i], s, atol=1e-6)
    # one point set broadcast against several boxes
    boxes = np.array([[0, 0, 60, 45], [10, 20, 119, 89]], float)
    m2, _, _ = predictor.predict(point_coords=[[30, 30]], point_labels=[1], box=boxes)
    m1, _, _ = predictor.predict(point_coords=[[30, 30]], point_labels=[1], box=boxes[1])
    np.testing.assert_array_equal(m2[1], m1)


def test_image_batch_equals_single(tiny_model):
    imgs = [random_image(H, W, seed=1), random_image(70, 40, seed=2)]
    batch = segany.SamPredictor(tiny_model)
    batch.set_image_batch(imgs)
    assert batch.get_image_embedding().shape[0] == 2
    out = batch.predict_batch(
        point_coords=[[[5, 5]], [[20, 30], [10, 10]]],
        point_labels=[[1], [1, 0]],
        boxes=[None, [0, 0, 30, 60]],
    )
    single = segany.SamPredictor(tiny_model)
    for img, (m, s, _), pc, pl, bx in zip(
        imgs,
        out,
        [[[5, 5]], [[20, 30], [10, 10]]],
        [[1], [1, 0]],
        [None, [0, 0, 30, 60]],
        strict=True,
    ):
        single.set_image(img)
        m1, s1, _ = single.predict(point_coords=pc, point_labels=pl, box=bx)
        np.testing.assert_allclose(
            batch.get_image_embedding()[len(out) - 1 : len(out)].shape,
            single.get_image_embedding().shape,
        )
        np.testing.assert_allclose(s, s1, atol=1e-5)
        assert (m != m1).mean() < 1e-3
    with pytest.raises(RuntimeError, match="predict_batch"):
        batch.predict(point_coords=[[1, 1]], point_labels=[1])


def test_embedding_file_roundtrip(predictor, tiny_model, tmp_path):
    ref = predictor.predict(point_coords=[[30, 40]], point_labels=[1], return_logits=True)
    predictor.save_embedding(tmp_path / "emb.safetensors")
    fresh = segany.SamPredictor(tiny_model)
    fresh.load_embedding(tmp_path / "emb.safetensors")
    got = fresh.predict(point_coords=[[30, 40]], point_labels=[1], return_logits=True)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # a different model refuses the file
    other = segany.build_sam_model(tiny_model_config()).eval()
    with pytest.raises(ValueError, match="different model"):
        segany.SamPredictor(other).load_embedding(tmp_path / "emb.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a segany embedding"):
        fresh.load_embedding(tmp_path / "junk.safetensors")


def tiny_model_config():
    from tests.helpers import TINY

    return TINY


@pytest.mark.parametrize(
    "image",
    [
        np.full((H, W), 128, np.uint8),
        np.full((H, W, 1), 128, np.uint8),
        np.full((H, W, 4), 128, np.uint8),
        np.full((H, W, 3), 128 * 257, np.uint16),
        np.full((H, W, 3), 128 / 255, np.float32),
        np.full((H, W, 3), 128.0, np.float64),
        Image.new("RGBA", (W, H), (128, 128, 128, 10)),
        Image.new("L", (W, H), 128),
        Image.new("I;16", (W, H), 128 * 257),
    ],
)
def test_image_kinds_convert_to_rgb(image):
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb == 128).all()


def test_bgr_is_flipped(tiny_model):
    img = random_image(H, W, seed=9)
    a, b = segany.SamPredictor(tiny_model), segany.SamPredictor(tiny_model)
    a.set_image(img)
    b.set_image(np.ascontiguousarray(img[:, :, ::-1]), image_format="BGR")
    torch.testing.assert_close(a.get_image_embedding(), b.get_image_embedding())


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
        (np.full((5, 5, 3), -1.0), "negative"),
        ("image.png", "numpy array or PIL"),
    ],
)
def test_bad_images(tiny_model, image, match):
    p = segany.SamPredictor(tiny_model)
    with pytest.raises(ValueError, match=match):
        p.set_image(image)
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(np.zeros((5, 5, 3), np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "no prompt given"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "no points"),
        ({"point_coords": [[10, 10]]}, "without point_labels"),
        ({"point_labels": [1]}, "without point_coords"),
        ({"point_coords": [[W + 5, 10]], "point_labels": [1]}, "outside the image"),
        ({"point_coords": [[-1, 10]], "point_labels": [1]}, "outside the image"),
        ({"point_coords": [[np.nan, 10]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[10, 10, 1]], "point_labels": [1]}, r"shape \(N, 2\)"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 1]}, "point_labels must have shape"),
        ({"point_coords": [[10, 10]], "point_labels": [7]}, "point_labels must be in"),
        ({"point_coords": [["a", 10]], "point_labels": [1]}, "numeric"),
        ({"box": [0, 0, 10]}, "box must have shape"),
        ({"box": [10, 10, 5, 20]}, "XYXY"),
        ({"box": [0, 0, W + 50, 20]}, "box outside the image"),
        ({"box": [0, np.inf, 5, 20]}, "NaN or infinite"),
        ({"mask_input": np.zeros((1, 32, 32))}, "mask_input must have shape"),
        (
            {
                "box": np.zeros((3, 4)),
                "point_coords": np.zeros((2, 1, 2)),
                "point_labels": np.ones((2, 1)),
            },
            "batch sizes disagree",
        ),
    ],
)
def test_bad_prompts_raise_value_error(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_image(tiny_model):
    p = segany.SamPredictor(tiny_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(ValueError, match=r"\(1, 3, h, w\)"):
        p.set_torch_image(torch.zeros(1, 3, 50, 50), (50, 50))


def test_reset_image(predictor):
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError):
        predictor.get_image_embedding()


def test_official_import_paths_exist():
    """Names official users import, reachable by swapping the package name."""
    from segany.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from segany.utils.transforms import ResizeLongestSide

    assert ResizeLongestSide(1024).get_preprocess_shape(768, 1024, 1024) == (768, 1024)
    assert all((ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer))
    for name in (
        "sam_model_registry",
        "SamPredictor",
        "build_sam",
        "build_sam_vit_b",
        "build_sam_vit_l",
        "build_sam_vit_h",
    ):
        assert hasattr(segany, name), name
    assert set(segany.sam_model_registry) == {"default", "vit_h", "vit_l", "vit_b"}


def test_fp16_runs(tiny_model):
    import copy

    m = segany.set_precision(copy.deepcopy(tiny_model), "fp16")
    p = segany.SamPredictor(m)
    p.set_image(random_image(H, W, seed=5))
    masks, scores, low = p.predict(point_coords=[[30, 40]], point_labels=[1])
    assert p.get_image_embedding().dtype == torch.float16
    assert masks.shape == (3, H, W) and np.isfinite(scores).all() and np.isfinite(low).all()
