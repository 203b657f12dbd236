"""Retraining as the dataset grows (segany.engine.retrain): frozen dataset versions
(deterministic content hash, SA-1B readable, stages filter, oversampling), the fixed held-out
split, and the retrain procedure end to end on a tiny project of procedural scenes with the
bundled model: a registered version with its evaluation, switched only when better, the
served model's embedding fingerprint changing after a switch; and ``segany engine retrain``'s
errors."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from segany.cli import engine_retrain  # noqa: E402
from segany.cli.common import UsageError  # noqa: E402
from segany.data.datasets import SA1BFolder  # noqa: E402
from segany.data.scenes import ProceduralScenes, SceneConfig  # noqa: E402
from segany.engine.retrain import (  # noqa: E402
    holdout_key,
    holdout_split,
    open_snapshot,
    retrain,
    snapshot,
)
from segany.engine.retrain import run as retrain_run  # noqa: E402
from segany.engine.store import InvalidInput, Project  # noqa: E402
from tests.helpers import fast_finetune_toml  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

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


def test_snapshot_leaves_out_unreviewed_proposals(tiny_project):
    """Prefilled proposals are training data once an annotator accepted them, not before."""
    p = tiny_project
    image = p.list_images()[0]
    square = np.zeros((image.height, image.width), bool)
    square[2:10, 3:12] = True
    pending, accepted = p.add_prefill(
        image.id,
        [{"segmentation": square, "predicted_iou": 0.97}, {"segmentation": ~square}],
        method="auto",
    )
    p.accept_proposal(accepted.id, version=accepted.version)
    snap = snapshot(p, stages=[2])
    ids = {m["id"] for entries in snap.manifest["splits"].values() for e in entries
           for m in e["masks"]}  # fmt: skip
    assert accepted.id in ids and pending.id not in ids


# ----------------------------------------------------------------------------- retrain


FAST_CONFIG = fast_finetune_toml(max_masks_per_image=3)


def retrain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segany engine")
    engine_retrain.register(parser.add_subparsers(dest="action"))
    return parser


def run_cli(*argv: str) -> int:
    args = retrain_parser().parse_args(["retrain", *argv])
    return args.func(args)


def bundled_state() -> dict:
    from safetensors.torch import load_file

    from segany.build import bundled_model_path

    return load_file(str(bundled_model_path()))


def write_model(path, *, broken: bool, shift: float = 1e-3) -> str:
    """The bundled weights as fp32 with the image encoder's neck shifted by ``shift`` (so
    another embedding fingerprint; masks as good), or also with the mask decoder's hypernetworks
    zeroed (every mask empty: a worse model)."""
    from safetensors.torch import save_file

    state = {k: v.float() for k, v in bundled_state().items()}
    state["image_encoder.neck.1.bias"] = state["image_encoder.neck.1.bias"] + shift
    if broken:
        for k in state:
            if k.startswith("mask_decoder.output_hypernetworks_mlps"):
                state[k] = state[k] * 0
    save_file(state, str(path))
    return str(path)


def served(project: Project) -> tuple[str, Path | None]:
    """The embedding fingerprint the annotation server's cache is keyed by, and its ONNX
    decoder folder (when onnx is installed), for the project's model as the server loads it
    (no socket)."""
    from segany.engine.server import create_app

    service = create_app(project, prefetch=False).state.embeddings
    has_onnx = importlib.util.find_spec("onnx") is not None
    try:
        return service.fingerprint, service.decoder_dir() if has_onnx else None
    finally:
        service.close()


def test_retrain_end_to_end_cli(tiny_project, tmp_path, capsys):
    p = tiny_project
    config = tmp_path / "fast.toml"
    config.write_text(FAST_CONFIG)
    parent = p.current_model()
    before, decoder_before = served(p)
    code = run_cli(
        str(p.root), "--config", str(config), "--steps", "2", "--device", "cpu",
        "--force-switch", "--eval-masks-per-image", "3", "--no-progress", "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    with Project.open(p.root) as q:
        versions = q.list_models()
        assert [v.id for v in versions] == [parent.id, report["new"]["id"]]
        new = versions[-1]
        assert new.parent_id == parent.id
        assert new.dataset_version_id == q.get_dataset_version(report["dataset_version"]).id
        ev = new.evaluation
        assert ev["dataset_version"] == report["dataset_version"] and ev["clicks"] == [1, 5]
        for e in (ev, ev["parent"]):
            assert 0 <= e["miou_1pt"] <= 1 and 0 <= e["miou_5pt"] <= 1 and e["num_masks"] > 0
            assert e["score"] == pytest.approx((e["miou_1pt"] + e["miou_5pt"]) / 2)
        assert ev["better"] == (ev["score"] > ev["parent"]["score"]) == report["better"]
        # forced: switched whatever the scores; the server now loads the new weights
        assert report["switched"] and q.current_model() == new and q.model == new.file
        # a decoder-only fine-tune keeps the embeddings (same cache key) and gets its own
        # ONNX decoder
        after, decoder_after = served(q)
        assert after == before and q.embedding_fingerprint(new) == after
        assert decoder_after != decoder_before
    run = tmp_path / "proj" / "retrain" / "r0001"
    assert json.loads((run / "report.json").read_text()) == report
    assert (run / "train" / "model.safetensors").is_file() and (run / "eval_new.json").is_file()
    if importlib.util.find_spec("onnx") is not None:
        assert (run / "onnx" / "decoder.onnx").is_file() and report["onnx_dir"] == str(run / "onnx")
    train_config = json.loads((run / "train" / "config.json").read_text())
    assert train_config["init"] == parent.file and train_config["steps"] == 2
    assert train_config["data"] == [
        str(tmp_path / "proj" / "datasets" / "v0001" / "train" / "manual")
    ]


@pytest.fixture
def fake_train(monkeypatch, tmp_path):
    """Replace the fine-tune by a model file chosen by the test (``fake_train.broken``)."""

    class Fake:
        broken = False
        calls = 0

    def train(config, device, progress):
        Fake.calls += 1
        out = tmp_path / f"fake_{Fake.calls}.safetensors"
        return Path(write_model(out, broken=Fake.broken, shift=1e-3 * Fake.calls))

    monkeypatch.setattr(retrain_run, "_train", train)
    return Fake


def test_retrain_switches_only_when_better(tiny_project, fake_train):
    p = tiny_project
    parent = p.current_model()
    fake_train.broken = True
    worse = retrain(p, export_decoder=False, eval_masks_per_image=3)
    assert not worse.better and not worse.switched
    assert worse.new["score"] < worse.parent["score"]
    assert p.current_model() == parent and p.model == "segany_tiny"
    assert worse.version.evaluation["better"] is False and worse.version.parent_id == parent.id
    assert "kept the current model" in worse.summary()
    forced = retrain(p, export_decoder=False, eval_masks_per_image=3, force_switch=True)
    assert forced.switched and not forced.better
    assert p.current_model() == forced.version and p.model == forced.version.file
    # from the broken model, a better one is switched to without forcing
    fake_train.broken = False
    fingerprint = served(p)[0]
    better = retrain(p, export_decoder=False, eval_masks_per_image=3)
    assert better.better and better.switched and better.version.parent_id == forced.version.id
    assert p.current_model() == better.version
    # another image encoder: the server's embedding cache key changes (images re-encoded)
    assert served(p)[0] != fingerprint == p.embedding_fingerprint(forced.version)
    assert p.embedding_fingerprint(better.version) == served(p)[0]
    assert [v.id for v in p.list_models()] == [
        parent.id, worse.version.id, forced.version.id, better.version.id,
    ]  # fmt: skip
    assert all(v.dataset_version_id == 1 for v in p.list_models()[1:])  # one snapshot
    # the metrics' model versions carry the held-out mIoU
    entries = {v["id"]: v for v in p.timeline()["model_versions"]}
    assert entries[parent.id]["holdout_miou_1pt"] is None
    assert entries[better.version.id]["holdout_miou_1pt"] == better.new["miou_1pt"]
    assert entries[better.version.id]["holdout_miou_5pt"] == better.new["miou_5pt"]
    assert entries[better.version.id]["dataset_version"] == "v0001"
    assert entries[better.version.id]["parent_id"] == forced.version.id


def test_killed_retrain_registers_nothing(tiny_project, fake_train, monkeypatch):
    p = tiny_project
    parent = p.current_model()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain_run, "_export_decoder", killed)
    with pytest.raises(KeyboardInterrupt):
        retrain(p, eval_masks_per_image=2)
    assert p.list_models() == [parent] and p.current_model() == parent
    with Project.open(p.root) as q:
        assert q.list_models() == [parent] and q.current_model() == parent
    assert not (p.root / "retrain" / "r0001" / "report.json").exists()


def test_retrain_bad_input(tiny_project, tmp_path):
    root = str(tiny_project.root)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("steps = = 3\n")
    cases = [
        ((str(tmp_path / "nowhere"),), "not a segany project"),
        ((root, "--stages", "1,4"), "--stages"),
        ((root, "--stages", ""), "--stages"),
        ((root, "--config", str(bad_toml)), "cannot parse training config"),
        ((root, "--config", str(tmp_path / "missing.toml")), "not found"),
        ((root, "--set", "nonsense=1"), "unknown training config field"),
        ((root, "--holdout", "1.5"), "--holdout"),
        ((root, "--oversample-manual", "0"), "--oversample-manual"),
        ((root, "--stages", "2"), "no accepted masks of stage"),
    ]
    for argv, message in cases:
        with pytest.raises(UsageError, match=message) as info:
            run_cli(*argv)
        assert info.value.exit_code == 2
    assert not (tiny_project.root / "retrain").exists()
    for kwargs, message in (
        ({"oversample_manual": 0}, "oversample_manual"),
        ({"holdout": 1.0}, "held-out fraction"),
        ({"stages": [5]}, "stages"),
        ({"steps": 0}, "steps"),
    ):
        with pytest.raises(InvalidInput, match=message):
            retrain(tiny_project, **kwargs)
    assert tiny_project.list_dataset_versions() == [] and len(tiny_project.list_models()) == 1
    with Project.init(tmp_path / "empty") as empty:
        empty.add_image_bytes(png(np.zeros((8, 8, 3), np.uint8)), "blank.png")
    with pytest.raises(UsageError, match="no accepted masks"):
        run_cli(str(tmp_path / "empty"))


def test_sigkilled_retrain_leaves_the_old_model(tiny_project, tmp_path):
    """A retrain process killed (SIGKILL) while training: nothing registered, the project on
    its model; the next retrain runs in a new run folder."""
    p = tiny_project
    parent = p.current_model()
    config = tmp_path / "fast.toml"
    config.write_text(FAST_CONFIG)
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from segany.engine.store import Project\n"
        "from segany.engine.retrain import retrain\n"
        f"with Project.open({str(p.root)!r}) as p:\n"
        f"    retrain(p, config={str(config)!r}, steps=10000, device='cpu')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    log = p.root / "retrain" / "r0001" / "train" / "log.jsonl"
    try:
        for _ in range(1200):  # at most 120 s
            if log.is_file() and log.stat().st_size > 0 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert log.is_file(), "training did not start in time"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with Project.open(p.root) as q:
        assert q.list_models() == [parent] and q.current_model() == parent
        assert q.model == "segany_tiny"
    assert not (p.root / "retrain" / "r0001" / "report.json").exists()
