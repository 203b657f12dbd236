"""The procedural scene generator: reproducible, nested, and its windowed fast path exact."""

import numpy as np
import pytest

from segany.data import scenes as sc
from segany.data.scenes import OBJECT, PART, SUBPART, ProceduralScenes, SceneConfig


def test_same_seed_same_scene_other_seed_other_scene():
    a, b = ProceduralScenes(4, seed=3), ProceduralScenes(4, seed=3)
    for i in range(4):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        np.testing.assert_array_equal(a[i].masks, b[i].masks)
    assert not np.array_equal(a[0].image, ProceduralScenes(4, seed=4)[0].image)
    assert not np.array_equal(a[0].image, a[1].image)


def test_scenes_have_nested_visible_regions():
    ds = ProceduralScenes(40, seed=0)
    counts = np.zeros(3, int)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        assert s.masks.dtype == bool and s.masks.shape[1:] == (256, 256)
        assert len(s.masks) == len(s.levels) == len(s.parents)
        assert (s.masks.reshape(len(s.masks), -1).mean(1) >= SceneConfig().min_area_fraction).all()
        counts += np.bincount(s.levels, minlength=3)
        for k, p in enumerate(s.parents):
            if p >= 0:  # a part lies inside its parent and is one level down
                assert s.levels[p] == s.levels[k] - 1
                assert not (s.masks[k] & ~s.masks[p]).any()
    assert counts[OBJECT] > counts[PART] > counts[SUBPART] > 0


def test_sizes_vary_per_scene():
    ds = ProceduralScenes(12, seed=2, sizes=((64, 96), (80, 48)))
    shapes = {ds[i].image.shape[:2] for i in range(12)}
    assert shapes == {(64, 96), (80, 48)}
    for i in range(12):
        assert ds[i].masks.shape[1:] == ds[i].image.shape[:2]


def test_windowed_texture_equals_the_full_texture():
    """Objects texture only their bounding box; each texture kind must equal the window of the
    texture computed over the whole image (same random draws, same values)."""
    h, w, box = 120, 90, (17, 83, 5, 71)
    seen = set()
    for seed in range(60):
        base = np.array([120.0, 60.0, 200.0])
        rng = np.random.default_rng(seed)
        kind = sc.TEXTURES[np.random.default_rng(seed).integers(len(sc.TEXTURES))]
        full = sc._texture(rng, h, w, base)
        part = sc._texture(np.random.default_rng(seed), h, w, base, box)
        assert part.shape == (box[1] - box[0], box[3] - box[2], 3)
        np.testing.assert_array_equal(part, full[box[0] : box[1], box[2] : box[3]])
        seen.add(kind)
    assert seen == set(sc.TEXTURES)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        ProceduralScenes(0)
    with pytest.raises(IndexError, match="out of range"):
        ProceduralScenes(2)[2]


def test_write_samples(tmp_path):
    """The sample images ``make serve`` starts from: PNGs of the stated sizes, the large one
    last, the same bytes for the same seed; a bad count is refused."""
    from PIL import Image

    from segany.data.sample import SAMPLE_SIZES, write_samples

    paths = write_samples(tmp_path / "a", count=4, seed=1)
    assert [p.name for p in paths] == [f"sample_{i:02d}.png" for i in range(4)]
    sizes = [Image.open(p).size[::-1] for p in paths]
    assert sizes[0] == (768, 1024) and sizes[-1] == SAMPLE_SIZES[-1]
    assert all(s in SAMPLE_SIZES for s in sizes[1:])
    again = write_samples(tmp_path / "b", count=2, seed=1)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths[:2]]
    with pytest.raises(ValueError, match="positive"):
        write_samples(tmp_path / "c", count=0)
