"""segany.text: the region crop, masked pooling, the TextEncoder interface and the small CLIP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from segany.text import (
    RegionCropConfig,
    SmallClip,
    SmallClipConfig,
    TextEncoder,
    Vocabulary,
    caption_positives,
    contrastive_loss,
    crop_region,
    load_small_clip,
    masked_pool,
    region_box,
    save_small_clip,
    train_small_clip,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHAPES = ("square", "circle")
WORDS = (*COLOURS, *SHAPES, "a")


def _mask(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[rows, cols] = True
    return mask


# --- region_box -------------------------------------------------------------------------------


def test_region_box_tight_expanded_and_squared():
    mask = _mask(10, 10, slice(2, 4), slice(4, 8))  # rows 2..3, columns 4..7: 4 wide, 2 high
    # Tight box (4, 2, 8, 4), centre (6, 3); squared to side 4.
    assert region_box(mask, 1.0) == (4.0, 1.0, 8.0, 5.0)
    # Scaled 1.5: 6 x 3, squared to side 6 about (6, 3).
    assert region_box(mask, 1.5) == (3.0, 0.0, 9.0, 6.0)
    # A single pixel at the corner, scale 3: side 3 about (0.5, 0.5), past the image.
    assert region_box(_mask(5, 5, slice(0, 1), slice(0, 1)), 3.0) == (-1.0, -1.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("mask", "scale", "message"),
    [
        (np.zeros((4, 4), bool), 1.0, "empty"),
        (np.ones((4, 4), np.uint8), 1.0, "bool"),
        (np.ones((1, 4, 4), bool), 1.0, r"\(H, W\)"),
        (np.ones((4, 4), bool), 0.0, "scale"),
        (np.ones((4, 4), bool), float("nan"), "scale"),
    ],
)
def test_region_box_bad_inputs(mask, scale, message):
    with pytest.raises(ValueError, match=message):
        region_box(mask, scale)


# --- crop_region ------------------------------------------------------------------------------


def _image(h: int, w: int) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3).astype(np.uint8)


def test_crop_region_at_one_pixel_per_pixel_is_an_exact_copy():
    image = _image(10, 10)
    mask = _mask(10, 10, slice(2, 4), slice(4, 8))
    crop, crop_mask = crop_region(image, mask, size=4, scale=1.0, zero_outside=False)
    assert crop.dtype == np.uint8 and crop.shape == (4, 4, 3)
    np.testing.assert_array_equal(crop, image[1:5, 4:8])
    np.testing.assert_array_equal(crop_mask, mask[1:5, 4:8])
    zeroed, _ = crop_region(image, mask, size=4, scale=1.0, zero_outside=True)
    np.testing.assert_array_equal(zeroed, np.where(mask[1:5, 4:8, None], image[1:5, 4:8], 0))


def test_crop_region_fills_outside_the_image_with_zero():
    image = _image(5, 5)
    mask = _mask(5, 5, slice(0, 1), slice(0, 1))
    crop, crop_mask = crop_region(image, mask, size=3, scale=3.0, zero_outside=False)
    expected = np.zeros((3, 3, 3), np.uint8)
    expected[1:, 1:] = image[:2, :2]
    np.testing.assert_array_equal(crop, expected)
    expected_mask = np.zeros((3, 3), bool)
    expected_mask[1, 1] = True
    np.testing.assert_array_equal(crop_mask, expected_mask)


def test_crop_region_downsamples_by_area():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2, :2] = 10  # top-left block mean 10
    image[:2, 2:] = [[0, 40, 80], [40, 80, 0]]  # top-right block means (20, 60, 40)
    image[2:, :2] = 200
    mask = np.ones((4, 4), bool)
    mask[3, 3] = False  # one pixel of four out: the block's mask mean 0.75 >= 0.5
    crop, crop_mask = crop_region(image, mask, size=2, scale=1.0, zero_outside=False)
    np.testing.assert_array_equal(crop[0, 0], [10, 10, 10])
    np.testing.assert_array_equal(crop[0, 1], [20, 60, 40])
    np.testing.assert_array_equal(crop[1, 0], [200, 200, 200])
    np.testing.assert_array_equal(crop[1, 1], [0, 0, 0])
    assert crop_mask.all()


def test_crop_region_keeps_a_thin_mask():
    image = np.full((200, 200, 3), 255, np.uint8)
    mask = np.eye(200, dtype=bool)  # a one-pixel diagonal line, 1/25 of each crop pixel
    crop, crop_mask = crop_region(image, mask, size=8, scale=1.0, zero_outside=True)
    assert crop_mask.any() and crop_mask[0, 0] and crop_mask[7, 7] and not crop_mask[0, 7]
    assert (crop[crop_mask] > 0).all() and (crop[~crop_mask] == 0).all()


def test_crop_region_bad_inputs():
    image, mask = _image(6, 6), _mask(6, 6, slice(1, 3), slice(1, 3))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        crop_region(image[..., 0], mask, size=4, scale=1.0, zero_outside=False)
    with pytest.raises(ValueError, match="uint8"):
        crop_region(image.astype(np.float32), mask, size=4, scale=1.0, zero_outside=False)
    with pytest.raises(ValueError, match="must equal the image"):
        crop_region(image, mask[:5], size=4, scale=1.0, zero_outside=False)
    with pytest.raises(ValueError, match="size"):
        crop_region(image, mask, size=0, scale=1.0, zero_outside=False)


def test_region_crop_config_draws():
    config = RegionCropConfig(size=8)
    assert config.draw(train=False) == (1.5, False)
    assert RegionCropConfig(size=8, zero_outside_inference=True).draw(train=False) == (1.5, True)
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):
        scale, zero = config.draw(train=True, generator=rng)
        assert scale == twin.uniform(1.0, 2.0) and 1.0 <= scale < 2.0
        assert zero == (twin.random() < 0.5)
    with pytest.raises(ValueError, match="Generator"):
        config.draw(train=True)
    for bad in (
        {"size": 0},
        {"size": 8, "train_scale": (2.0, 1.0)},
        {"size": 8, "zero_outside_probability": 2},
    ):
        with pytest.raises(ValueError):
            RegionCropConfig(**bad)
    with pytest.raises(TypeError):
        RegionCropConfig(8)  # keyword-only


# --- masked_pool ------------------------------------------------------------------------------


def test_masked_pool_hand_computed():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])[None]
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # the whole top-left cell: weight 1
    mask[0, 0, 2] = True  # one pixel of the top-right cell: weight 1/4
    out = masked_pool(features, mask)
    # (1 * 1 + 0.25 * 2) / 1.25 = 1.2 and (10 + 0.25 * 20) / 1.25 = 12.
    torch.testing.assert_close(out, torch.tensor([[1.2, 12.0]]))
    empty = masked_pool(features, torch.zeros(1, 4, 4, dtype=torch.bool))
    torch.testing.assert_close(empty, torch.tensor([[2.5, 25.0]]))  # the global mean
    both = masked_pool(features.expand(2, -1, -1, -1), torch.cat([mask, torch.zeros_like(mask)]))
    torch.testing.assert_close(both, torch.tensor([[1.2, 12.0], [2.5, 25.0]]))


def test_masked_pool_bad_inputs():
    with pytest.raises(ValueError, match="bool"):
        masked_pool(torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        masked_pool(torch.zeros(2, 2, 2, 2), torch.zeros(1, 4, 4, dtype=torch.bool))


# --- Vocabulary -------------------------------------------------------------------------------


def test_vocabulary_words_specials_and_unknowns():
    vocab = Vocabulary(["Red", "square", "red"])
    assert vocab.words == ("red", "square") and len(vocab) == 5
    assert vocab.ids("RED, square!") == [3, 4]
    assert vocab.ids("purple square") == [Vocabulary.UNK, 4]
    tokens = vocab.encode(["red square", "a b c d e"], max_tokens=4)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[3, 4, Vocabulary.EOS, Vocabulary.PAD], [1, 1, 1, Vocabulary.EOS]]
    with pytest.raises(ValueError, match="a-z0-9"):
        Vocabulary(["two words"])
    with pytest.raises(ValueError, match="not one str"):
        Vocabulary("red")


# --- the loss ---------------------------------------------------------------------------------


def test_contrastive_loss_hand_computed_and_duplicates():
    emb = torch.eye(2)
    scale = torch.tensor(0.0)  # exp(0) = 1: logits are the cosine similarities
    expected = -torch.log(torch.tensor(np.e / (np.e + 1.0)))
    torch.testing.assert_close(contrastive_loss(emb, emb, scale), expected)
    # Two identical captions: multi-positive targets (1/2, 1/2) against equal logits cost log 2
    # per row, the same whether or not the embeddings are told apart.
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positives = caption_positives(["red square", "Red  square"])
    assert positives.all()
    torch.testing.assert_close(
        contrastive_loss(same, same, scale, positives=positives), torch.log(torch.tensor(2.0))
    )
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(3, 3), scale)
    with pytest.raises(ValueError, match="true diagonal"):
        contrastive_loss(emb, emb, scale, positives=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="SmallClipConfig"):
        SmallClip({"embed_dim": 8})


def test_attribute_positives_and_the_asymmetric_targets():
    """ "the star" fits both stars, "the red star" only the red one; each direction of the loss
    spreads its target over its own positives."""
    from segany.text import attribute_positives

    captions = ["the red star", "the star", "the small star"]
    regions = [
        {"color": "red", "shape": "star", "texture": "solid"},
        {"color": "blue", "shape": "star", "texture": "solid"},
        {"color": "blue", "shape": "star", "texture": "solid"},
    ]
    named = [{"color": "red", "shape": "star"}, {"shape": "star"}, None]
    p = attribute_positives(captions, regions, named)
    # rows: regions, columns: captions; the size caption matches by its words only
    assert p.tolist() == [[True, True, False], [False, True, False], [False, True, True]]
    with pytest.raises(ValueError, match="differ in length"):
        attribute_positives(captions, regions[:2], named)
    # logits = identity (scale 1): with L = log(e + 2), a matching pair's log-softmax is 1 - L
    # and another's -L. Region-to-text rows average over the texts a region fits (2, 1, 2:
    # mean L - 2/3), text-to-region rows over the regions a text fits (1, 3, 1: L - 7/9).
    eye = torch.eye(3)
    big_l = float(np.log(np.e + 2))
    expected = torch.tensor(big_l - 13 / 18)
    torch.testing.assert_close(contrastive_loss(eye, eye, torch.tensor(0.0), positives=p), expected)


# --- the small CLIP ---------------------------------------------------------------------------

TINY = SmallClipConfig(
    embed_dim=32, image_size=32, widths=(16, 32), text_width=32, text_heads=2, words=WORDS
)


def _scene(rng: np.random.Generator, size: int = 48) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A grey image with two different coloured shapes, each with its mask and caption."""
    image = np.full((size, size, 3), 128, np.uint8) + rng.integers(0, 8, (size, size, 3)).astype(
        np.uint8
    )
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    colours = rng.choice(list(COLOURS), size=2, replace=False)
    for i, colour in enumerate(colours):
        shape = SHAPES[int(rng.integers(2))]
        r = int(rng.integers(6, 10))
        cx = int(rng.integers(r, size // 2 - r)) + i * size // 2
        cy = int(rng.integers(r, size - r))
        if shape == "square":
            mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[mask] = COLOURS[colour]
        pairs.append((image, mask, f"a {colour} {shape}"))
    return pairs


def _pairs_fn(step: int, rng: np.random.Generator):
    return _scene(rng)


def _model(seed: int = 0) -> SmallClip:
    torch.manual_seed(seed)
    return SmallClip(TINY).eval()


def test_small_clip_is_a_text_encoder_with_normalised_float32_rows():
    model = _model()
    assert isinstance(model, TextEncoder) and model.embed_dim == 32
    text = model.encode_text(["a red square", "blue circle", "purple thing"])
    assert text.shape == (3, 32) and text.dtype == torch.float32 and text.device.type == "cpu"
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    image, mask, _ = _scene(np.random.default_rng(0))[0]
    region = model.encode_region(image, mask)
    assert region.shape == (32,) and region.dtype == torch.float32
    torch.testing.assert_close(region.norm(), torch.tensor(1.0))
    assert not region.requires_grad and not text.requires_grad


def test_unknown_words_map_to_unk():
    model = _model()
    torch.testing.assert_close(
        model.encode_text(["a purple square"]), model.encode_text(["a mauve square"])
    )
    assert model.tokenize(["a purple square"])[0, 1] == Vocabulary.UNK


def test_encode_regions_equals_one_by_one():
    model = _model()
    pairs = _scene(np.random.default_rng(1))
    image = pairs[1][0]  # both pairs share the image; the second has both shapes drawn
    masks = np.stack([m for _, m, _ in pairs])
    batched = model.encode_regions(image, masks)
    single = torch.stack([model.encode_region(image, m) for m in masks])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)
    # In training, with the same generator seed, in mask order.
    batched = model.encode_regions(image, masks, train=True, generator=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    single = torch.stack([model.encode_region(image, m, train=True, generator=rng) for m in masks])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)
    texts = ["a red square", "blue circle", "green"]
    torch.testing.assert_close(
        model.encode_text(texts),
        torch.cat([model.encode_text([t]) for t in texts]),
        atol=1e-6,
        rtol=1e-5,
    )


def test_encoder_bad_inputs():
    model = _model()
    image = np.zeros((8, 8, 3), np.uint8)
    mask = _mask(8, 8, slice(1, 3), slice(1, 3))
    for texts, message in (
        ([], "non-empty"),
        ("red", "not one str"),
        (["red", ""], r"texts\[1\] is empty"),
        (["red", 3], r"texts\[1\] must be a str"),
    ):
        with pytest.raises(ValueError, match=message):
            model.encode_text(texts)
    with pytest.raises(ValueError, match="empty"):
        model.encode_region(image, np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="uint8"):
        model.encode_region(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        model.encode_region(image, mask[None])
    with pytest.raises(ValueError, match=r"with \(H, W\) = \(8, 8\)"):
        model.encode_regions(image, mask[None, :4])
    with pytest.raises(ValueError, match=r"empty masks at indices \[1\]"):
        model.encode_regions(image, np.stack([mask, np.zeros_like(mask)]))
    with pytest.raises(ValueError, match="Generator"):
        model.encode_region(image, mask, train=True)


def test_small_clip_config_checks_and_json_round_trip():
    assert SmallClipConfig.from_json(TINY.to_json()) == TINY
    assert TINY.crop == RegionCropConfig(size=32)
    with pytest.raises(ValueError, match="crop.size"):
        SmallClipConfig(image_size=32, crop=RegionCropConfig(size=16))
    with pytest.raises(ValueError, match="a-z0-9"):
        SmallClipConfig(words=("red square",))
    with pytest.raises(TypeError):
        SmallClipConfig(128)  # keyword-only
    with pytest.raises(ValueError, match="spatial_pool"):
        SmallClipConfig(spatial_pool=-1)
    pooled = SmallClipConfig(spatial_pool=2, words=WORDS, image_size=32)
    assert SmallClipConfig.from_json(pooled.to_json()) == pooled


def test_spatial_pool_sees_only_inside_the_mask_and_where():
    from segany.text.small_clip import RegionEncoder

    torch.manual_seed(0)
    enc = RegionEncoder(SmallClipConfig(widths=(4,), spatial_pool=2, embed_dim=8)).eval()
    enc.stages = torch.nn.Identity()  # the pooling alone, on the input itself
    x = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True
    out = enc(x, mask)
    y = x.clone()
    y[..., 4:, :] = 100.0  # outside the mask
    torch.testing.assert_close(enc(y, mask), out, rtol=0, atol=0)
    # the same pixels in another quadrant: the same masked mean, another layout
    moved = torch.roll(x, shifts=(4, 4), dims=(2, 3))
    moved_mask = torch.roll(mask, shifts=(4, 4), dims=(1, 2))
    assert not torch.allclose(enc(moved, moved_mask), out)


def test_save_load_round_trip(tmp_path):
    model = _model(seed=2)
    path = tmp_path / "small_clip.safetensors"
    save_small_clip(model, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    loaded = load_small_clip(path)
    assert loaded.config == model.config and loaded.vocabulary.words == model.vocabulary.words
    texts = ["a red square", "blue circle"]
    torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts), rtol=0, atol=0)
    image, mask, _ = _scene(np.random.default_rng(0))[0]
    torch.testing.assert_close(
        loaded.encode_region(image, mask), model.encode_region(image, mask), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="no small CLIP file"):
        load_small_clip(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_small_clip(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors", metadata={"format": "x"})
    with pytest.raises(ValueError, match="not a small CLIP file"):
        load_small_clip(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="must be a SmallClip"):
        save_small_clip(torch.nn.Linear(2, 2), path)


def test_training_lowers_the_loss_and_is_reproducible():
    kwargs = {"config": TINY, "steps": 40, "batch_size": 16, "lr": 3e-3, "seed": 0}
    model, history = train_small_clip(_pairs_fn, **kwargs)
    assert len(history) == 40 and not model.training
    start = np.mean([h["loss"] for h in history[:5]])
    end = np.mean([h["loss"] for h in history[-5:]])
    assert end < start - 0.5, (start, end)
    # The trained model tells a red square from a blue circle.
    rng = np.random.default_rng(123)
    hits = 0
    for _ in range(10):
        pairs = _scene(rng)
        image = pairs[-1][0]
        regions = model.encode_regions(image, np.stack([m for _, m, _ in pairs]))
        texts = model.encode_text([c for _, _, c in pairs])
        hits += int((regions @ texts.T).argmax(dim=1).eq(torch.arange(2)).sum())
    assert hits >= 14, hits
    _, again = train_small_clip(_pairs_fn, **{**kwargs, "steps": 3})
    assert [h["loss"] for h in again] == [h["loss"] for h in history[:3]]


def test_training_bad_inputs():
    with pytest.raises(ValueError, match="batch_size"):
        train_small_clip(_pairs_fn, config=TINY, steps=1, batch_size=1, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="steps"):
        train_small_clip(_pairs_fn, config=TINY, steps=0, batch_size=4, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="no pairs"):
        train_small_clip(lambda s, r: [], config=TINY, steps=1, batch_size=4, lr=1e-3, seed=0)


def test_import_layering():
    """segany.text imports neither the predictor, training nor the CLI, and open_clip only when
    an OpenClipEncoder is built."""
    code = (
        "import sys, segany.text\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['segany', 'predictor'], ['segany', 'train'], ['segany', 'cli']) or m == 'open_clip']\n"
        "assert not bad, bad\n"
        "segany.text.OpenClipEncoder\n"
        "assert 'open_clip' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
