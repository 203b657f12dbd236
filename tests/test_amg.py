"""Automatic mask generator: parity with the official generator, filters, batching."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator

import segany
from segany.amg import SamAutomaticMaskGenerator
from tests.helpers import TINY, make_amg_pair, make_pair, random_image


def _blob_predict_masks(
    self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
):
    """Synthetic decoder with real-looking output: per token, a blob around the prompt point
    (random-Fourier PE similarity) of a token-specific size, plus image texture (holes and
    islands), and IoU predictions that vary with the point. Replaces ``predict_masks`` in both
    the official and our decoder so the generators' pipelines are compared on real masks."""
    b, _, c = sparse_prompt_embeddings.shape
    q = sparse_prompt_embeddings[:, 0, :]
    _, _, h, w = image_pe.shape
    sim = (q @ image_pe[0].reshape(c, h * w)).reshape(b, 1, h, w) / c
    tex = image_embeddings[:1].mean(1, keepdim=True)
    tex = (tex - tex.mean()) / (tex.std() + 1e-6)
    sim = F.interpolate(sim, (4 * h, 4 * w), mode="bilinear", align_corners=False)
    tex = F.interpolate(tex, (4 * h, 4 * w), mode="bilinear", align_corners=False)
    thr = torch.tensor([0.25, 0.15, 0.3, 0.4]).view(1, 4, 1, 1)
    masks = 60.0 * (sim - thr) + 6.0 * tex
    iou = 0.75 + 0.25 * torch.cos(q[:, :4] * 7.0)
    return masks, iou


def _blob_pair():
    official, ours = make_pair(TINY, 0)
    for m in (official, ours):
        m.mask_decoder.predict_masks = types.MethodType(_blob_predict_masks, m.mask_decoder)
    ours.mask_decoder.backend = "eager"  # the fast path does not call predict_masks
    return official, ours


def _to_mask(seg):
    if isinstance(seg, np.ndarray):
        return seg
    if isinstance(seg["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(seg, *seg["size"])).astype(bool)
    return mask_utils.decode(seg).astype(bool)


def assert_same_records(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert list(x) == list(y)
        ma, mb = _to_mask(x["segmentation"]), _to_mask(y["segmentation"])
        iou = (ma & mb).sum() / max((ma | mb).sum(), 1)
        assert iou >= 0.99, iou
        assert abs(x["predicted_iou"] - y["predicted_iou"]) <= 1e-4
        # The score counts pixels above +-offset; a logit within float noise of the offset can
        # flip between two equivalent op orders, moving the score by ~1 / area per pixel.
        assert abs(x["stability_score"] - y["stability_score"]) <= max(1e-4, 3 / x["area"])
        assert x["area"] == y["area"] and x["bbox"] == y["bbox"]
        assert x["crop_box"] == y["crop_box"] and x["point_coords"] == y["point_coords"]
        assert type(x["segmentation"]) is type(y["segmentation"])
        if isinstance(x["segmentation"], dict):
            assert x["segmentation"] == y["segmentation"]


KNOBS = dict(points_per_side=12, pred_iou_thresh=0.7, stability_score_thresh=0.8)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"crop_n_layers": 1},
        {"crop_n_layers": 1, "crop_n_points_downscale_factor": 2, "min_mask_region_area": 40},
        {"min_mask_region_area": 60, "output_mode": "coco_rle"},
        {"output_mode": "uncompressed_rle", "box_nms_thresh": 0.5},
    ],
)
def test_parity_with_official_generator(extra):
    official, ours = _blob_pair()
    img = random_image(150, 200, seed=11)
    kw = {**KNOBS, **extra}
    expected = OfficialGenerator(official, **kw).generate(img)
    got = SamAutomaticMaskGenerator(ours, **kw).generate(img)
    assert_same_records(expected, got)
    assert len(got) >= 3  # the setting really produces several masks


def test_point_grids_argument_and_batch_size_do_not_change_results():
    official, ours = _blob_pair()
    img = random_image(100, 90, seed=2)
    grid = [np.random.default_rng(0).uniform(0.05, 0.95, (40, 2))]
    kw = dict(
        points_per_side=None, point_grids=grid, pred_iou_thresh=0.7, stability_score_thresh=0.8
    )
    expected = OfficialGenerator(official, **kw).generate(img)
    for ppb in (7, 64):
        got = SamAutomaticMaskGenerator(ours, points_per_batch=ppb, **kw).generate(img)
        assert_same_records(expected, got)


def test_fast_decoder_equals_eager_in_generator():
    _, ours = make_amg_pair(TINY, 0, 10.0)
    eager = copy.deepcopy(ours)
    eager.mask_decoder.backend = "eager"
    img = random_image(120, 160, seed=3)
    kw = dict(
        points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    a = SamAutomaticMaskGenerator(eager, **kw).generate(img)
    b = SamAutomaticMaskGenerator(ours, **kw).generate(img)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        assert abs(x["predicted_iou"] - y["predicted_iou"]) < 1e-4
        assert (x["segmentation"] != y["segmentation"]).mean() < 1e-3


def test_filters_and_generate_batch():
    _, ours = _blob_pair()
    imgs = [random_image(150, 200, seed=11), random_image(80, 60, seed=4)]
    base = SamAutomaticMaskGenerator(ours, **KNOBS)
    full = base.generate(imgs[0])
    assert len(full) >= 3
    top2 = SamAutomaticMaskGenerator(ours, max_masks=2, **KNOBS).generate(imgs[0])
    best = sorted(r["predicted_iou"] for r in full)[-2:]
    assert sorted(r["predicted_iou"] for r in top2) == best
    frac = np.median([r["area"] for r in full]) / (150 * 200)
    small = SamAutomaticMaskGenerator(ours, max_area_fraction=frac, **KNOBS).generate(imgs[0])
    assert 0 < len(small) < len(full)
    assert all(r["area"] < frac * 150 * 200 for r in small)
    big = SamAutomaticMaskGenerator(ours, min_area_fraction=frac, **KNOBS).generate(imgs[0])
    assert all(r["area"] >= frac * 150 * 200 for r in big)
    assert len(small) + len(big) == len(full)
    batch = base.generate_batch(imgs)
    for img, recs in zip(imgs, batch, strict=True):
        assert_same_records(base.generate(img), recs) if recs else None
    assert len(batch) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"output_mode": "png"}, "output_mode"),
        ({"points_per_side": None}, "exactly one"),
        ({"point_grids": [np.zeros((4, 2))]}, "exactly one"),
        (
            {"points_per_side": None, "point_grids": [np.zeros((4, 2))], "crop_n_layers": 1},
            "one grid per crop layer",
        ),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"min_area_fraction": 0.5, "max_area_fraction": 0.1}, "area_fraction"),
    ],
)
def test_bad_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamAutomaticMaskGenerator(tiny_model, **kwargs)


def test_importable_like_official():
    from segany.utils.amg import build_point_grid, generate_crop_boxes

    assert hasattr(segany, "SamAutomaticMaskGenerator")
    assert build_point_grid(4).shape == (16, 2)
    boxes, layers = generate_crop_boxes((600, 800), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 800, 600] and layers == [0, 1, 1, 1, 1]


def test_utils_rle_helpers_equal_official():
    from segment_anything.utils import amg as official_amg

    from segany.utils import amg

    rng = np.random.default_rng(0)
    masks = torch.as_tensor(rng.random((5, 9, 14)) > 0.5)
    masks[0] = False
    masks[1] = True
    ours, theirs = amg.mask_to_rle_pytorch(masks), official_amg.mask_to_rle_pytorch(masks)
    assert ours == theirs
    for rle in theirs:
        np.testing.assert_array_equal(amg.rle_to_mask(rle), official_amg.rle_to_mask(rle))
        assert amg.area_from_rle(rle) == official_amg.area_from_rle(rle)
        assert amg.coco_encode_rle(rle) == official_amg.coco_encode_rle(rle)
    boxes_ours = amg.batched_mask_to_box(masks)
    torch.testing.assert_close(boxes_ours, official_amg.batched_mask_to_box(masks))
    # boxes straight from logits equal the boxes of the thresholded masks (empty ones too)
    logits = torch.as_tensor(rng.normal(size=(6, 2, 9, 14)), dtype=torch.float32)
    logits[0, 0] = -1.0
    expected = official_amg.batched_mask_to_box(logits > 0.3)
    assert torch.equal(amg.batched_logits_to_box(logits, 0.3), expected)
    assert amg.batched_logits_to_box(logits[:0], 0.0).shape == (0, 2, 4)
    crop_ours = amg.generate_crop_boxes((480, 640), 2, 512 / 1500)
    assert crop_ours == official_amg.generate_crop_boxes((480, 640), 2, 512 / 1500)
    np.testing.assert_array_equal(amg.build_point_grid(7), official_amg.build_point_grid(7))
