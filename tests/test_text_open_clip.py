"""segany.text.OpenClipEncoder on random weights: a tiny open_clip config for the plumbing, and
the paper's ViT-L/14@336 for the shapes (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany.text import OpenClipEncoder, RegionCropConfig, TextEncoder

TINY_OVERRIDES = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _tiny(**kwargs) -> OpenClipEncoder:
    torch.manual_seed(0)
    return OpenClipEncoder(model_overrides=TINY_OVERRIDES, **kwargs)


def _image_and_masks() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    masks = np.zeros((3, 40, 50), bool)
    masks[0, 5:15, 5:30] = True
    masks[1, 20:39, 30:49] = True
    masks[2, 0:2, 0:2] = True
    return image, masks


def _check_rows(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert x.shape == shape and x.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(shape[:-1]))


def test_tiny_open_clip_shapes_and_preprocessing():
    encoder = _tiny()
    assert isinstance(encoder, TextEncoder)
    assert encoder.embed_dim == 24 and encoder.image_size == 32
    assert encoder.crop == RegionCropConfig(size=32) and encoder.masked_attention
    assert encoder.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    _check_rows(encoder.encode_text(["a red square", "a dog", "x"]), (3, 24))
    image, masks = _image_and_masks()
    _check_rows(encoder.encode_region(image, masks[0]), (24,))
    batched = encoder.encode_regions(image, masks)
    _check_rows(batched, (3, 24))
    single = torch.stack([encoder.encode_region(image, m) for m in masks])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    texts = ["a red square", "a dog"]
    torch.testing.assert_close(
        encoder.encode_text(texts),
        torch.cat([encoder.encode_text([t]) for t in texts]),
        atol=1e-5,
        rtol=1e-4,
    )


def _crops(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    crops = np.random.default_rng(seed).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    crop_masks = np.zeros((2, 32, 32), bool)
    crop_masks[0, :, :16] = True  # the left two patch columns of the 4 x 4 grid
    crop_masks[1, 9:11, 9:11] = True  # inside patch (1, 1) only
    return crops, crop_masks


def test_masked_attention_patches_and_full_mask():
    encoder = _tiny()
    _, crop_masks = _crops()
    inside = encoder.patch_mask(torch.from_numpy(crop_masks))
    grid = inside.reshape(2, 4, 4)
    assert grid[0, :, :2].all() and not grid[0, :, 2:].any()
    assert grid[1].sum() == 1 and grid[1, 1, 1]
    # A mask over the whole crop leaves the attention as it is: open_clip's own encode_image.
    crops, _ = _crops()
    full = np.ones((2, 32, 32), bool)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(encoder.mean)[:, None, None]) / torch.tensor(encoder.std)[:, None, None]
    with torch.no_grad():
        expected = encoder.model.encode_image(x, normalize=True)
        torch.testing.assert_close(encoder._encode_crops(crops, full), expected)
        masked = encoder._encode_crops(crops, crop_masks)
    assert not torch.allclose(masked, expected, atol=1e-3)


def test_masked_attention_ignores_patches_outside_the_mask_in_a_one_layer_vit():
    overrides = {**TINY_OVERRIDES, "vision_cfg": {**TINY_OVERRIDES["vision_cfg"], "layers": 1}}
    torch.manual_seed(0)
    encoder = OpenClipEncoder(model_overrides=overrides)
    crops, crop_masks = _crops()
    changed = crops.copy()
    changed[0, :, 16:] = 255 - changed[0, :, 16:]  # right half: outside mask 0's patches
    changed[1, 20:] = 0  # rows of patches outside mask 1's
    with torch.no_grad():
        a = encoder._encode_crops(crops, crop_masks)
        b = encoder._encode_crops(changed, crop_masks)
    torch.testing.assert_close(a, b)
    unmasked = OpenClipEncoder(model_overrides=overrides, masked_attention=False)
    with torch.no_grad():
        assert not torch.allclose(
            unmasked._encode_crops(crops, crop_masks), unmasked._encode_crops(changed, crop_masks)
        )


def test_without_masked_attention_the_crop_is_zeroed_outside_the_mask():
    encoder = _tiny(masked_attention=False)
    assert encoder.crop == RegionCropConfig(size=32, zero_outside_inference=True)
    image, masks = _image_and_masks()
    _check_rows(encoder.encode_regions(image, masks), (3, 24))
    avg = {**TINY_OVERRIDES, "vision_cfg": {**TINY_OVERRIDES["vision_cfg"], "pool_type": "avg"}}
    with pytest.raises(ValueError, match="masked_attention=False"):
        OpenClipEncoder(model_overrides=avg)
    OpenClipEncoder(model_overrides=avg, masked_attention=False)


def test_tiny_open_clip_loads_a_local_checkpoint(tmp_path):
    encoder = _tiny()
    path = tmp_path / "tiny_clip.pt"
    torch.save(encoder.model.state_dict(), path)
    torch.manual_seed(1)  # different random weights before the checkpoint replaces them
    loaded = OpenClipEncoder(model_overrides=TINY_OVERRIDES, pretrained=path)
    texts = ["a red square"]
    torch.testing.assert_close(loaded.encode_text(texts), encoder.encode_text(texts))
    image, masks = _image_and_masks()
    torch.testing.assert_close(
        loaded.encode_regions(image, masks), encoder.encode_regions(image, masks)
    )


def test_open_clip_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="local checkpoint file"):
        _tiny(pretrained="openai")  # a download tag is refused, never fetched
    with pytest.raises(ValueError, match="local checkpoint file"):
        _tiny(pretrained=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="built-in architecture"):
        OpenClipEncoder(model_name="no-such-model")
    with pytest.raises(ValueError, match="crop.size"):
        _tiny(crop=RegionCropConfig(size=16))
    with pytest.raises(TypeError):
        OpenClipEncoder("ViT-L-14-336")  # keyword-only
    encoder = _tiny()
    with pytest.raises(ValueError, match="non-empty"):
        encoder.encode_text([])
    image, masks = _image_and_masks()
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_region(image, np.zeros(image.shape[:2], bool))


@pytest.mark.slow
def test_vit_l_14_336_random_weights():
    torch.manual_seed(0)
    encoder = OpenClipEncoder()  # the paper's ViT-L/14@336, random weights
    assert encoder.embed_dim == 768 and encoder.image_size == 336
    _check_rows(encoder.encode_text(["a wheel", "beaver tooth grille"]), (2, 768))
    image, masks = _image_and_masks()
    _check_rows(encoder.encode_region(image, masks[0]), (768,))
