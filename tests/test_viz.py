"""segany.viz: mask overlays (fill, outline, colours, prompts) and atomic PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segany import viz

H, W = 60, 80
GRAY = 128


def gray_image() -> np.ndarray:
    return np.full((H, W, 3), GRAY, np.uint8)


def square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def blend(color: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    return np.rint((1 - alpha) * GRAY + alpha * np.asarray(color, np.float64)).astype(np.uint8)


def test_shape_dtype_and_input_untouched():
    img = gray_image()
    before = img.copy()
    out = viz.overlay_masks(img, square(10, 30, 10, 40)[None])
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.array_equal(img, before)
    assert out is not img


def test_masked_pixels_change_unmasked_pixels_do_not():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = square(10, 30, 20, 50)
    out = viz.overlay_masks(img, mask[None])
    assert np.array_equal(out[~mask], img[~mask])
    changed = np.any(out != img, axis=-1)
    assert changed[mask].mean() > 0.95  # a pixel can only stay equal by coincidence


def test_fill_is_alpha_blend_of_palette_colour():
    mask = square(10, 30, 20, 50)
    out = viz.overlay_masks(gray_image(), mask[None], alpha=0.5)
    assert np.array_equal(out[20, 35], blend(viz.mask_color(0)))
    out3 = viz.overlay_masks(gray_image(), mask[None], alpha=0.3, outline=False)
    assert np.array_equal(out3[20, 35], blend(viz.mask_color(0), 0.3))
    none = viz.overlay_masks(gray_image(), mask[None], alpha=0.0, outline=False)
    assert np.array_equal(none, gray_image())


def test_outline_differs_from_fill_and_is_darker():
    mask = square(10, 30, 20, 50)
    out = viz.overlay_masks(gray_image(), mask[None])
    edge, inside = out[10, 35], out[20, 35]
    assert not np.array_equal(edge, inside)
    expected = np.rint(np.asarray(viz.mask_color(0)) * 0.55).astype(np.uint8)
    assert np.array_equal(edge, expected)
    assert int(edge.sum()) < int(inside.sum())
    # the outline is on the mask boundary only: just outside stays untouched
    assert np.array_equal(out[9, 35], [GRAY] * 3)
    plain = viz.overlay_masks(gray_image(), mask[None], outline=False)
    assert np.array_equal(plain[10, 35], plain[20, 35])


def test_two_masks_get_distinct_colours_deterministically():
    masks = np.stack([square(5, 25, 5, 30), square(30, 55, 45, 75)])
    out = viz.overlay_masks(gray_image(), masks)
    a, b = out[15, 17], out[42, 60]
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 60
    assert np.array_equal(a, blend(viz.mask_color(0)))
    assert np.array_equal(b, blend(viz.mask_color(1)))
    assert np.array_equal(out, viz.overlay_masks(gray_image(), masks))
    assert len(set(viz.PALETTE)) == len(viz.PALETTE)


def test_points_and_boxes_are_drawn():
    img = gray_image()
    empty = np.zeros((0, H, W), bool)
    out = viz.overlay_masks(
        img, empty, points=np.array([[20, 20], [60, 40]]), labels=np.array([1, 0])
    )
    fg, bg = out[20, 20].astype(int), out[40, 60].astype(int)
    assert fg[1] > 150 and fg[0] < 50 and fg[2] < 50  # green
    assert bg[0] > 150 and bg[1] < 50 and bg[2] < 50  # red
    assert np.array_equal(out[0, 79], img[0, 79])  # far from the prompts: untouched
    boxed = viz.overlay_masks(img, empty, boxes=np.array([[10, 10, 70, 50]]))
    assert np.array_equal(boxed[10, 40], viz.BOX_COLOR)
    assert np.array_equal(boxed[30, 40], img[30, 40])  # inside the box is not filled


def test_point_labels_default_to_foreground_and_ignore_padding():
    empty = np.zeros((0, H, W), bool)
    out = viz.overlay_masks(gray_image(), empty, points=[[30, 30]])
    assert out[30, 30, 1] > 150 and out[30, 30, 0] < 50
    skipped = viz.overlay_masks(gray_image(), empty, points=[[30, 30]], labels=[-1])
    assert np.array_equal(skipped, gray_image())


def test_line_sizes_scale_with_image():
    small = viz._line_scale(100, 100)
    large = viz._line_scale(2000, 3000)
    assert all(s <= g for s, g in zip(small, large, strict=True))
    assert large[1] > small[1] and large[3] > small[3]
    assert 1 <= small[0] <= large[0] <= 2


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="masks must have shape"):
        viz.overlay_masks(gray_image(), np.zeros((1, H, W + 1), bool))
    with pytest.raises(ValueError, match="uint8"):
        viz.overlay_masks(gray_image().astype(np.float32), np.zeros((1, H, W), bool))
    with pytest.raises(ValueError, match="labels"):
        viz.overlay_masks(
            gray_image(), np.zeros((0, H, W), bool), points=[[1, 2], [3, 4]], labels=[1]
        )
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay_masks(gray_image(), np.zeros((1, H, W), bool), alpha=1.5)


def test_save_mask_png_roundtrip(tmp_path):
    mask = square(3, 40, 7, 66)
    mask[50, 2] = True
    path = tmp_path / "m.png"
    viz.save_mask_png(path, mask)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (W, H)
        a = np.asarray(im)
    assert set(np.unique(a).tolist()) == {0, 255}
    assert np.array_equal(a == 255, mask)
    viz.save_mask_png(path, ~mask)  # overwrite in place
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im) == 255, ~mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temp files left


def test_save_image_png_roundtrip_and_atomic_failure(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    viz.save_image_png(tmp_path / "o.png", img)
    with Image.open(tmp_path / "o.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), img)
    with pytest.raises(ValueError):
        viz.save_mask_png(tmp_path / "bad.png", np.zeros((2, 3, 4), bool))
    with pytest.raises(FileNotFoundError):
        viz.write_bytes_atomic(tmp_path / "missing_dir" / "x.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]
