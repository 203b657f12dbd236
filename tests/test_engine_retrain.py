"""Retraining as the dataset grows (segany.engine.retrain): frozen dataset versions
(deterministic content hash, SA-1B readable, stages filter, oversampling), the fixed held-out
split, and the retrain procedure end to end on a tiny project of procedural scenes with the
bundled model: a registered version with its evaluation, switched only when better, the
served model's embedding fingerprint changing after a switch; and ``segany engine retrain``'s
errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from segany.data.datasets import SA1BFolder  # noqa: E402
from segany.data.scenes import ProceduralScenes, SceneConfig  # noqa: E402
from segany.engine.retrain import holdout_key, holdout_split, open_snapshot, snapshot  # noqa: E402
from segany.engine.store import InvalidInput, Project  # noqa: E402

SIZE = 96


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def add_scenes(
    project: Project, start: int, n: int, *, stage: int = 1, source: str = "manual"
) -> list[int]:
    """Add procedural scenes ``start .. start + n - 1`` with their ground-truth masks as
    accepted masks; returns the image ids."""
    scenes = ProceduralScenes(start + n, seed=3, config=SceneConfig(height=SIZE, width=SIZE))
    ids = []
    for i in range(start, start + n):
        scene = scenes[i]
        image, _ = project.add_image_bytes(png(scene.image), f"scene_{i}.png")
        for m in scene.masks:
            if m.any():
                project.add_mask(image.id, segmentation=m, stage=stage, source=source)
        ids.append(image.id)
    return ids


@pytest.fixture
def tiny_project(tmp_path):
    with Project.init(tmp_path / "proj") as p:
        add_scenes(p, 0, 6)
        yield p


# ----------------------------------------------------------------------------- holdout


def test_holdout_split_is_fixed_and_sticky():
    rng = np.random.default_rng(0)
    shas = ["".join(rng.choice(list("0123456789abcdef"), 64)) for _ in range(40)]
    held = holdout_split(shas, 0.25)
    assert held == {s for s in shas if holdout_key(s) < 0.25}
    assert held == holdout_split(list(reversed(shas)), 0.25)  # order does not matter
    assert 0 < len(held) < len(shas)
    more = shas + ["".join(rng.choice(list("0123456789abcdef"), 64)) for _ in range(20)]
    assert held <= holdout_split(more, 0.25)  # adding images never un-holds one
    # with too few images for the fraction, one image (the smallest key) is held out ...
    few = sorted(shas, key=holdout_key)[-3:]
    assert holdout_split(few, 0.01) == {few[0]}
    assert holdout_split(few, 0.01, eligible=few[1:]) == {few[1]}
    assert holdout_split(few[:1], 0.5) <= set(few[:1]) and holdout_split([], 0.1) == set()
    # ... and stays held out when an image with a smaller key arrives later
    smallest = sorted(shas, key=holdout_key)[0]
    assert holdout_split([*few, smallest], 0.0, previous={few[0]}) == {few[0]}
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(InvalidInput, match="held-out fraction"):
            holdout_split(shas, bad)


# ----------------------------------------------------------------------------- snapshot


def test_snapshot_layout_hash_and_holdout(tmp_path, db_url):
    with Project.init(tmp_path / "proj", db_url=db_url) as p:
        add_scenes(p, 0, 5)
        snap = snapshot(p, holdout=0.1)
        assert snap.name == "v0001" and snap.root == p.root / "datasets" / "v0001"
        manifest = json.loads((snap.root / "manifest.json").read_text())
        assert manifest["content_hash"] == snap.content_hash == snap.version.content_hash
        held = set(manifest["holdout"])
        assert len(held) >= 1 and held == set(snap.version.holdout)
        # SA-1B folders readable by SA1BFolder, images and masks as in the project
        train = SA1BFolder(snap.root / "train" / "manual")
        hold = SA1BFolder(snap.root / "holdout")
        assert {train.name(i) for i in range(len(train))}.isdisjoint(held)
        assert {hold.name(i) for i in range(len(hold))} == held
        by_sha = {im.sha256: im for im in p.list_images()}
        for ds in (train, hold):
            for i in range(len(ds)):
                sample = ds[i]
                image = by_sha[sample.name]
                stored = p.list_masks(image.id)
                assert len(sample.masks) == len(stored) > 0
                assert np.array_equal(
                    sample.image, np.asarray(Image.open(p.image_file(image.id)).convert("RGB"))
                )
        entry = next(e for e in manifest["splits"]["train/manual"])
        assert {"id", "version", "source", "stage"} <= set(entry["masks"][0])
        assert len(train) + len(hold) == 5
        # the same content gives the same version; new content a new version, same holdout
        assert snapshot(p, holdout=0.1).version == snap.version
        add_scenes(p, 5, 2)
        snap2 = snapshot(p, holdout=0.1)
        assert snap2.name == "v0002" and snap2.content_hash != snap.content_hash
        assert held <= set(snap2.version.holdout)
        assert not (p.root / "datasets" / ".v0002.tmp").exists()


def test_snapshot_hash_depends_on_content_only(tmp_path):
    hashes = []
    for name in ("a", "b"):
        with Project.init(tmp_path / name) as p:
            if name == "b":  # other mask ids: an extra mask added, then deleted
                [image_id] = add_scenes(p, 9, 1)
                extra = p.list_masks(image_id)[0]
                p.delete_mask(extra.id)
                p.add_mask(image_id, segmentation=extra.segmentation)
            add_scenes(p, 0, 4)
            if name == "a":
                add_scenes(p, 9, 1)
            hashes.append(snapshot(p).content_hash)
    assert hashes[0] == hashes[1]


def test_snapshot_stages_and_oversampling(tiny_project):
    p = tiny_project
    add_scenes(p, 6, 3, stage=3, source="auto")
    only_manual = snapshot(p, stages=[1])
    assert only_manual.train_specs(3) == [str(only_manual.root / "train" / "manual")] * 3
    counts = only_manual.version.counts
    assert counts["train/other"] == {"images": 0, "masks": 0}
    everything = snapshot(p, stages=(1, 2, 3))
    assert everything.name != only_manual.name and everything.version.stages == [1, 2, 3]
    specs = everything.train_specs(2)
    assert specs == [str(everything.root / "train" / "manual")] * 2 + [
        str(everything.root / "train" / "other")
    ]
    auto = open_snapshot(p, "v0002")
    for entry in auto.manifest["splits"]["train/other"]:
        assert {m["source"] for m in entry["masks"]} == {"auto"}
    with pytest.raises(InvalidInput, match="no accepted masks of stage"):
        snapshot(p, stages=[2])
    for bad in ([], [0], [4], "x"):
        with pytest.raises(InvalidInput, match="stages"):
            snapshot(p, stages=bad)
    with pytest.raises(InvalidInput, match="oversample_manual"):
        everything.train_specs(0)
