"""Training with text prompts (the paper's App. D.5): per-mask embeddings in the batch, the text
group of the interactive rounds, and a text path added to a model that had none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import segany
from segany.config import PromptEncoderConfig
from segany.data.captions import caption_objects
from segany.train import TrainConfig
from segany.train.data import StepBatches, open_training_data
from segany.train.engine import InteractiveSam
from segany.train.text import TextPrompts, caption_texts
from tests.helpers import TINY, randomize_

pytestmark = pytest.mark.usefixtures("one_thread")

D = 12


class FakeEncoder:
    """A deterministic stand-in for a text encoder: a region's embedding is its mean colour
    and area (with a random crop-like jitter in training), a text's a hash of its words."""

    embed_dim = D

    def __init__(self) -> None:
        self.region_calls = 0

    def encode_regions(self, image, masks, *, train=False, generator=None):
        self.region_calls += 1
        out = torch.zeros(len(masks), D)
        for k, m in enumerate(masks):
            out[k, :3] = torch.from_numpy(image[m].mean(0) / 255.0).float()
            out[k, 3] = float(m.mean())
            if train:
                out[k, 4] = float(generator.uniform(1, 2))
        return torch.nn.functional.normalize(out + 1e-3, dim=-1)

    def encode_text(self, texts):
        out = torch.zeros(len(texts), D)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, sum(map(ord, w)) % D] += 1
        return torch.nn.functional.normalize(out, dim=-1)


def _text_tiny():
    pe = dataclasses.replace(TINY.prompt_encoder, text_embed_dim=D)
    return dataclasses.replace(TINY, prompt_encoder=pe)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {
        "data": ("procedural-text:3:5",),
        "images_per_step": 2,
        "max_masks_per_image": 4,
        "rounds": 3,
        "point_rounds": 1,
        "warmup_steps": 0,
        "steps": 2,
        "precision": "fp32",
        "text_prompts": True,
        "text_encoder": "unused-in-these-tests",
        "out_dir": str(tmp_path / "run"),
    }
    base.update(kw)
    return TrainConfig(**base)


def _batch(cfg: TrainConfig, encoder, img_size=128):
    stream = StepBatches(
        open_training_data(cfg.data),
        cfg,
        img_size=img_size,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        text=TextPrompts(encoder, cfg.text_source),
    )
    return stream, stream.batch(0)


def test_text_config_is_validated():
    with pytest.raises(ValueError, match="needs text_encoder"):
        TrainConfig(text_prompts=True)
    with pytest.raises(ValueError, match="text_source"):
        TrainConfig(text_source="words")
    with pytest.raises(ValueError, match="text_probability"):
        TrainConfig(text_probability=1.5)
    with pytest.raises(ValueError, match="text_point_probability"):
        TrainConfig(text_point_probability=-0.1)
    with pytest.raises(ValueError, match="'region' or 'caption'"):
        TextPrompts(FakeEncoder(), "words")


def test_region_embeddings_ride_along_and_leave_the_rest_of_the_batch_alone(tmp_path):
    cfg = _cfg(tmp_path)
    enc = FakeEncoder()
    stream, batch = _batch(cfg, enc)
    n = len(batch["targets"])
    assert batch["text"].shape == (n, D) and batch["has_text"].all()
    assert torch.allclose(batch["text"].norm(dim=-1), torch.ones(n))
    # the same step without text: the same images, masks and order
    plain = StepBatches(
        stream.dataset,
        cfg,
        img_size=128,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).batch(0)
    assert "text" not in plain
    for k in ("images", "targets", "image_index", "valid"):
        assert torch.equal(plain[k], batch[k])
    # reproducible: the text stream is a function of (seed, step, rank)
    assert torch.equal(stream.batch(0)["text"], batch["text"])
    assert not torch.equal(stream.batch(1)["text"][:1], batch["text"][:1])


def test_caption_embeddings_only_for_captioned_objects(tmp_path):
    cfg = _cfg(tmp_path, text_source="caption", max_masks_per_image=16, images_per_step=1)
    enc = FakeEncoder()
    stream, batch = _batch(cfg, enc)
    i = stream.image_indices(0)[0]
    scene = stream.dataset.locate(i)[0].scene(i)
    rng = np.random.default_rng(0)
    caps = caption_texts(stream.dataset, i, rng)
    assert caps and set(caps) <= {k for k in range(len(scene.masks)) if scene.levels[k] == 0}
    assert len(caption_objects(scene)) == len(caps)
    has = batch["has_text"]
    assert 0 < int(has.sum()) < len(has)  # parts are not captioned
    rows = torch.nonzero(has)[:, 0]
    # every embedding with has_text is a text embedding of some caption of the scene
    assert torch.allclose(batch["text"][rows].norm(dim=-1), torch.ones(len(rows)))
    assert (batch["text"][~has] == 0).all()
    # plain procedural data has no captions
    assert caption_texts(open_training_data(("procedural:2:1",)), 0, rng) == {}


def test_text_group_trains_the_text_path(tmp_path, monkeypatch):
    from segany.train import engine

    cfg = _cfg(tmp_path, text_probability=1.0)
    sam = randomize_(segany.build_sam_model(_text_tiny()), 0).train()
    _, batch = _batch(cfg, FakeEncoder())
    seen = []
    real = sam.prompt_encoder.forward

    def spy(points, boxes, masks, text=None):
        seen.append((points, boxes, None if text is None else text.shape))
        return real(points, boxes, masks, text=text)

    monkeypatch.setattr(sam.prompt_encoder, "forward", spy)
    out = InteractiveSam(sam, cfg)(batch, seed=1)
    n = len(batch["targets"])
    # every mask starts from its text alone, then clicks join the text token
    assert seen[0] == (None, None, (n, D))
    assert seen[1][0] is not None and seen[1][2] == (n, D)
    out["loss"].backward()
    pe = sam.prompt_encoder
    assert pe.text_projection.weight.grad.abs().sum() > 0
    assert pe.text_embed.weight.grad.abs().sum() > 0
    assert torch.isfinite(out["loss"])
    monkeypatch.undo()
    # with probability 0 the text path is never used and gets no gradient
    sam.zero_grad(set_to_none=True)
    out = InteractiveSam(sam, cfg.replace(text_probability=0.0))(batch, seed=1)
    out["loss"].backward()
    assert sam.prompt_encoder.text_projection.weight.grad is None
    del engine


def test_text_and_point_first_prompts(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, text_probability=1.0, text_point_probability=1.0)
    sam = randomize_(segany.build_sam_model(_text_tiny()), 0).train()
    _, batch = _batch(cfg, FakeEncoder())
    seen = []
    real = sam.prompt_encoder.forward

    def spy(points, boxes, masks, text=None):
        seen.append((points, None if text is None else text.shape))
        return real(points, boxes, masks, text=text)

    monkeypatch.setattr(sam.prompt_encoder, "forward", spy)
    out = InteractiveSam(sam, cfg.replace(rounds=1, point_rounds=0))(batch, seed=1)
    n = len(batch["targets"])
    (points, labels), text_shape = seen[0]
    assert len(seen) == 1 and text_shape == (n, D)
    assert points.shape == (n, 1, 2) and (labels == 1).all()
    # the point lies inside its own mask (input frame = target frame here)
    x, y = points[:, 0, 0].long(), points[:, 0, 1].long()
    assert batch["targets"][torch.arange(n), y, x].all()
    assert torch.isfinite(out["loss"])


def test_text_path_is_added_to_an_init_without_one(tmp_path):
    from segany.train.model import TEXT_PARAM_PREFIXES, build_training_model

    init = tmp_path / "init.pth"
    plain = randomize_(segany.build_sam_model(TINY), 0)
    torch.save(plain.state_dict(), init)
    sam = build_training_model(_cfg(tmp_path, init=str(init)), text_embed_dim=D)
    assert sam.prompt_encoder.text_projection.in_features == D
    sd = sam.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert {k for k in sd if k.startswith(TEXT_PARAM_PREFIXES)} == set(sd) - set(plain.state_dict())
    # an init with a text path of another width is refused
    other = tmp_path / "other.pth"
    torch.save(segany.build_sam_model(_text_tiny()).state_dict(), other)
    with pytest.raises(ValueError, match="12-dim embeddings but the text encoder gives 7"):
        build_training_model(_cfg(tmp_path, init=str(other)), text_embed_dim=7)
    # without text_prompts the model is built exactly as before
    again = build_training_model(_cfg(tmp_path, init=str(init), text_prompts=False))
    assert set(again.state_dict()) == set(plain.state_dict())
    assert PromptEncoderConfig().text_embed_dim is None


def test_scene_pairs_hold_out_their_combinations():
    from segany.data.captions import HELD_OUT_COMBINATIONS
    from segany.train.text_encoder import ScenePairs

    pairs = ScenePairs(seed=3)
    rng = np.random.default_rng(0)
    seen = []
    for step in range(6):
        for image, mask, text, region, named in pairs(step, rng):
            assert image.shape[:2] == mask.shape and mask.any() and text.startswith("the ")
            assert set(region) == {"color", "shape", "texture"}
            # what the caption names is the region's own (None: size or position named)
            assert named is None or (named and named.items() <= region.items())
            seen.append(text)
    held = {f"{c} {s}" for c, s in HELD_OUT_COMBINATIONS}
    assert seen and not any(h in t for t in seen for h in held)
    assert pairs._next == 6  # one scene per call, never repeated


def test_scene_pairs_subset_captions_name_what_they_fit():
    from segany.data.captions import phrase
    from segany.train.text_encoder import ScenePairs

    pairs = ScenePairs(seed=3, subset_probability=1.0)
    rng = np.random.default_rng(0)
    named_sets = set()
    for step in range(4):
        for _, _, text, region, named in pairs(step, rng):
            assert named and named.items() <= region.items()
            assert text == phrase(region, tuple(named))
            named_sets.add(tuple(sorted(named)))
    assert ("shape",) in named_sets and ("texture",) in named_sets


def test_train_text_encoder_cli_writes_a_loadable_encoder(tmp_path, capsys):
    import json

    from segany.cli.main import main
    from segany.text import load_small_clip

    out = tmp_path / "clip.safetensors"
    args = ["train-text-encoder", "--out", str(out), "--steps", "3", "--batch-size", "8"]
    assert main([*args, "--embed-dim", "16", "--log-every", "0"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["steps"] == 3 and record["out"] == str(out)
    encoder = load_small_clip(out)
    assert encoder.embed_dim == 16
    assert tuple(encoder.encode_text(["the red star"]).shape) == (1, 16)
    # an existing file is kept unless --force; bad values are refused before any training
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main(["train-text-encoder", "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["train-text-encoder", "--out", str(out), "--force", "--lr", "-1"]) == 2
    assert "--lr: must be a positive number" in capsys.readouterr().err


def test_a_text_training_run_ships_its_encoder_beside_the_model(tmp_path):
    """``segany train`` with text prompts and a small-CLIP file end to end: the text path
    trains, the point/box weights it started from are in the model, and the encoder is copied
    beside ``model.safetensors`` so ``load_model`` of it answers text."""
    from segany.build import text_encoder_path
    from segany.data.captions import VOCABULARY
    from segany.predictor import SamPredictor
    from segany.text import SmallClip, SmallClipConfig, save_small_clip
    from segany.train import train

    clip = tmp_path / "clip.safetensors"
    cfg = SmallClipConfig(embed_dim=D, widths=(8, 16), text_width=16, words=VOCABULARY)
    save_small_clip(SmallClip(cfg), clip)
    init = tmp_path / "init.pth"
    torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), init)
    config = _cfg(tmp_path, init=str(init), text_encoder=str(clip), text_probability=1.0)
    train(config, device="cpu", progress=False)
    model_path = Path(config.out_dir) / "model.safetensors"
    assert text_encoder_path(model_path).read_bytes() == clip.read_bytes()
    model = segany.load_model(model_path, precision="fp32", device="cpu")
    assert model.prompt_encoder.has_text and isinstance(model.text_encoder, SmallClip)
    from segany.train.model import build_training_model

    start = build_training_model(config, text_embed_dim=D).prompt_encoder
    again = build_training_model(config, text_embed_dim=D).prompt_encoder
    assert torch.equal(start.text_projection.weight, again.text_projection.weight)
    assert not torch.equal(
        model.prompt_encoder.text_projection.weight, start.text_projection.weight
    )
    predictor = SamPredictor(model)
    predictor.set_image(np.zeros((40, 50, 3), np.uint8))
    masks, _, _ = predictor.predict(text="the red star")
    assert masks.shape == (3, 40, 50)
