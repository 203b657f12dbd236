"""Parity with the official ``segment-anything`` package on the same random weights (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as OfficialPredictor

import segany
from tests.helpers import random_image

IOU_TOL = 1e-4
LOGIT_BAND = 1e-3


def assert_masks_match(ours_logits: np.ndarray, off_logits: np.ndarray) -> None:
    """Masks equal except on pixels whose official logit is within LOGIT_BAND of 0."""
    assert ours_logits.shape == off_logits.shape
    differ = (ours_logits > 0) != (off_logits > 0)
    assert not (differ & (np.abs(off_logits) > LOGIT_BAND)).any(), (
        f"{int(differ.sum())} mask pixels differ away from the threshold"
    )


def compare_predict(ours: segany.SamPredictor, off: OfficialPredictor, **prompt) -> np.ndarray:
    for multimask in (True, False):
        m1, s1, l1 = off.predict(**prompt, multimask_output=multimask, return_logits=True)
        m2, s2, l2 = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
        np.testing.assert_allclose(s2, s1, atol=IOU_TOL, rtol=0)
        np.testing.assert_allclose(l2, l1, atol=1e-3, rtol=1e-4)
        assert_masks_match(m2, m1)
        b2, _, _ = ours.predict(**prompt, multimask_output=multimask)
        assert b2.dtype == np.bool_
        np.testing.assert_array_equal(b2, m2 > 0)
    return l1


def run_prompt_suite(ours: segany.SamPredictor, off: OfficialPredictor, h: int, w: int) -> None:
    rng = np.random.default_rng(h * 7 + w)
    pt = np.array([[w * 0.4, h * 0.55]])
    compare_predict(ours, off, point_coords=pt, point_labels=np.array([1]))
    pts = rng.uniform([0, 0], [w - 1, h - 1], size=(4, 2))
    compare_predict(ours, off, point_coords=pts, point_labels=np.array([1, 0, 1, 0]))
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    compare_predict(ours, off, box=box)
    low = compare_predict(ours, off, point_coords=pt, point_labels=np.array([1]), box=box)
    # mask fed back, as in interactive use
    compare_predict(
        ours, off, point_coords=pts[:2], point_labels=np.array([1, 0]), mask_input=low[:1]
    )
    # batched boxes through predict_torch
    boxes = torch.tensor(
        [[0, 0, w / 2, h / 2], [w / 4, h / 4, w - 1, h - 1], [w * 0.3, 0, w * 0.6, h - 1]],
        dtype=torch.float,
    )
    tb = off.transform.apply_boxes_torch(boxes, (h, w))
    m1, s1, l1 = off.predict_torch(None, None, boxes=tb, multimask_output=True, return_logits=True)
    m2, s2, l2 = ours.predict_torch(None, None, boxes=tb, multimask_output=True, return_logits=True)
    np.testing.assert_allclose(s2.numpy(), s1.numpy(), atol=IOU_TOL, rtol=0)
    assert_masks_match(m2.numpy(), m1.numpy())


@pytest.mark.parametrize("hw", [(100, 160), (128, 128), (200, 90), (37, 50)])
def test_tiny_parity(tiny_pair, hw):
    official, model = tiny_pair
    h, w = hw
    img = random_image(h, w, seed=h + w)
    off, ours = OfficialPredictor(official), segany.SamPredictor(model)
    off.set_image(img)
    ours.set_image(img)
    np.testing.assert_allclose(
        ours.get_image_embedding().numpy(), off.get_image_embedding().numpy(), atol=1e-4, rtol=0
    )
    run_prompt_suite(ours, off, h, w)


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(480, 640), (700, 300)])
def test_vit_b_parity(vit_b_pair, hw):
    official, model = vit_b_pair
    h, w = hw
    img = random_image(h, w, seed=1)
    off, ours = OfficialPredictor(official), segany.SamPredictor(model)
    off.set_image(img)
    ours.set_image(img)
    e1, e2 = off.get_image_embedding().numpy(), ours.get_image_embedding().numpy()
    assert e2.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(e2, e1, atol=1e-4, rtol=0)
    run_prompt_suite(ours, off, h, w)


def test_tiny_official_batched_forward(tiny_pair):
    """``Sam.forward`` with the official list-of-dicts interface."""
    official, model = tiny_pair
    t = segany.ResizeLongestSide(128)
    batch = []
    for h, w in [(90, 128), (128, 60)]:
        img = t.apply_image(random_image(h, w, seed=w))
        batch.append(
            {
                "image": torch.as_tensor(img).permute(2, 0, 1).float(),
                "original_size": (h, w),
                "point_coords": t.apply_coords_torch(torch.tensor([[[w / 2, h / 2]]]), (h, w)),
                "point_labels": torch.tensor([[1]]),
                "boxes": t.apply_boxes_torch(torch.tensor([[2.0, 3.0, w - 5, h - 9]]), (h, w)),
            }
        )
    with torch.no_grad():
        a = official(batch, multimask_output=True)
        b = model(batch, multimask_output=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(
            y["iou_predictions"].numpy(), x["iou_predictions"].numpy(), atol=IOU_TOL
        )
        np.testing.assert_allclose(
            y["low_res_logits"].numpy(), x["low_res_logits"].numpy(), atol=1e-3
        )
