"""Scene attributes, named colours and captions that single out one object."""

import numpy as np
import pytest

from segany.data import captions as cap
from segany.data.datasets import open_dataset
from segany.data.scenes import (
    OBJECT,
    PALETTE,
    ProceduralScenes,
    RegionAttributes,
    Scene,
    SceneConfig,
)

PAL = SceneConfig(palette=True)


def _scene(specs):
    """A scene of square objects from ``(colour, texture, shape, radius, x0)`` rows."""
    n = len(specs)
    masks = np.zeros((n, 100, 200), bool)
    attrs = []
    for k, (color, texture, shape, radius, x0) in enumerate(specs):
        masks[k, 40:60, x0 : x0 + 10] = True
        attrs.append(RegionAttributes(shape, texture, color, (0.0, 0.0, 0.0), radius, (x0, 50.0)))
    return Scene(
        image=np.zeros((100, 200, 3), np.uint8),
        masks=masks,
        levels=np.zeros(n, np.int64),
        parents=np.full(n, -1, np.int64),
        attributes=tuple(attrs),
    )


def test_palette_off_records_attributes_without_colour_names():
    s = ProceduralScenes(3, seed=0)[1]
    assert len(s.attributes) == len(s.masks) > 0
    assert all(a.color is None for a in s.attributes)
    with pytest.raises(ValueError, match="palette=True"):
        cap.caption_objects(s)


def test_palette_regions_carry_named_colours_near_their_pixels():
    ds = ProceduralScenes(30, seed=2, config=PAL)
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        for k, a in enumerate(s.attributes):
            assert a.color in PALETTE and a.shape and a.texture
            seen.add(a.color)
            own = s.masks[k] & ~s.masks[s.parents == k].any(0)  # without its parts
            if s.levels[k] == OBJECT and a.texture == "solid" and own.sum() > 400:
                mean = s.image[own].reshape(-1, 3).mean(0)
                # the named colour is the nearest palette entry to the visible pixels
                near = min(PALETTE, key=lambda n: np.abs(mean - PALETTE[n]).sum())
                assert near == a.color, (i, k, mean, a.color)
            if s.parents[k] >= 0:  # a part never has its parent's colour name
                assert a.color != s.attributes[s.parents[k]].color
    assert seen == set(PALETTE)


def test_excluded_combinations_are_never_drawn_for_objects():
    cfg = SceneConfig(palette=True, excluded_combinations=cap.HELD_OUT_COMBINATIONS)
    ds = ProceduralScenes(60, seed=3, config=cfg)
    pairs = {
        (a.color, a.shape)
        for i in range(len(ds))
        for a, lv in zip(ds[i].attributes, ds[i].levels, strict=True)
        if lv == OBJECT
    }
    assert not pairs & set(cap.HELD_OUT_COMBINATIONS)
    free = ProceduralScenes(60, seed=3, config=PAL)
    free_pairs = {
        (a.color, a.shape)
        for i in range(len(free))
        for a, lv in zip(free[i].attributes, free[i].levels, strict=True)
        if lv == OBJECT
    }
    assert free_pairs & set(cap.HELD_OUT_COMBINATIONS)


def test_bad_scene_configs_are_refused():
    with pytest.raises(ValueError, match="needs palette"):
        SceneConfig(excluded_combinations=(("blue", "star"),))
    with pytest.raises(ValueError, match="colour in"):
        SceneConfig(palette=True, excluded_combinations=(("teal", "star"),))


def test_fewest_attributes_that_make_each_object_unique():
    s = _scene(
        [
            ("red", "solid", "star", 0.1, 10),
            ("red", "stripes", "star", 0.1, 40),
            ("blue", "stripes", "star", 0.25, 70),
            ("green", "solid", "ellipse", 0.1, 100),
        ]
    )
    texts = {c.index: c.text for c in cap.caption_objects(s)}
    assert texts == {
        0: "the red plain object",
        1: "the red striped object",
        2: "the blue object",
        3: "the green object",
    }
    assert [c.held_out for c in cap.caption_objects(s)] == [False, False, True, False]


def test_identical_objects_get_positions_or_no_caption():
    row = ("pink", "checker", "blob", 0.15)
    s = _scene([(*row, 10), (*row, 90), (*row, 180)])
    caps = cap.caption_objects(s)
    assert [(c.index, c.text) for c in caps] == [
        (0, "the pink blob on the left"),
        (2, "the pink blob on the right"),
    ]
    assert caps[0].attributes == ("color", "shape", "position")


def test_random_tie_breaks_and_overspecification_stay_unique():
    ds = ProceduralScenes(20, seed=4, config=PAL)
    rng = np.random.default_rng(0)
    words = set(cap.VOCABULARY)
    texts = set()
    for i in range(len(ds)):
        s = ds[i]
        for c in cap.caption_objects(s, rng, overspecify=0.5):
            assert set(c.text.split()) <= words
            texts.add(c.text)
            # no other object matches every attribute the caption names
            v = cap._values(s, c.index)
            used = [a for a in c.attributes if a != "position"]
            matches = [
                j
                for j in range(len(s.masks))
                if s.levels[j] == OBJECT and all(cap._values(s, j)[a] == v[a] for a in used)
            ]
            assert matches == [c.index] or "position" in c.attributes
    assert len(texts) > 40
    with pytest.raises(ValueError, match="probability"):
        cap.caption_objects(ds[0], rng, overspecify=1.5)


def test_size_words():
    assert [cap.size_word(r) for r in (0.08, 0.13, 0.19, 0.2, 0.26)] == [
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]


def test_text_dataset_specs():
    ds = open_dataset("procedural-text:3:5")
    assert ds.scenes.config.palette and "palette=True" in repr(ds)
    assert all(a.color in PALETTE for a in ds.scene(0).attributes)
    d = open_dataset({"type": "procedural", "length": 2, "palette": True, "exclude_held_out": True})
    assert d.scenes.config.excluded_combinations == cap.HELD_OUT_COMBINATIONS
    np.testing.assert_array_equal(
        open_dataset("procedural:2:5")[1].image, ProceduralScenes(2, seed=5)[1].image
    )
    with pytest.raises(ValueError, match="true or false"):
        open_dataset({"type": "procedural", "length": 2, "palette": "yes"})
    with pytest.raises(ValueError, match="needs palette"):
        open_dataset({"type": "procedural", "length": 2, "exclude_held_out": True})
    with pytest.raises(ValueError, match="procedural-text:N"):
        open_dataset("procedural-text:")
