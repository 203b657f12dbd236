"""Training: losses against hand-computed values, the click simulator, min-loss selection,
a short run that learns, exact resume, a 2-process torchrun (gloo) run and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import segany
from segany.train import TrainConfig, clicks, load_train_config, train
from segany.train.losses import dice_loss, mask_iou, sam_loss, sigmoid_focal_loss
from segany.train.model import lr_factor, param_groups
from segany.train.outputs import read_log
from tests.helpers import TINY, randomize_

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- losses


def test_focal_and_dice_match_hand_computed_values():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 1/4; alpha 0.25 on the positive, 0.75 else
    expected_focal = (0.25 * 0.25 + 3 * 0.75 * 0.25) * math.log(2) / 4
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(expected_focal, rel=1e-6)
    # dice: sum p = 2, sum t = 1, intersection 0.5 -> 1 - (2 * 0.5 + 1) / (3 + 1) = 0.5
    assert dice_loss(logits, target).item() == pytest.approx(0.5, rel=1e-6)
    # a confident, correct prediction has near-zero focal loss and small dice loss
    good = (target * 2 - 1) * 20
    assert sigmoid_focal_loss(good, target).item() < 1e-12
    assert dice_loss(good, target).item() < 1e-6
    # padding (valid = 0) is ignored: the wrong pixel there does not count
    valid = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    bad_pad = good.clone()
    bad_pad[..., 1, 1] = 20.0
    assert sigmoid_focal_loss(bad_pad, target, valid).item() < 1e-12
    assert mask_iou(bad_pad, target, valid).item() == 1.0
    assert mask_iou(bad_pad, target).item() == pytest.approx(0.5)


def test_sam_loss_combines_20_to_1_plus_iou_mse():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    iou_pred = torch.tensor([[0.3], [0.9]])
    out = sam_loss(logits, iou_pred, target)
    focal = sigmoid_focal_loss(logits, target)[:, 0]
    dice = dice_loss(logits, target)[:, 0]
    iou = mask_iou(logits, target)[:, 0]
    expected = (20 * focal + dice + (iou_pred[:, 0] - iou) ** 2).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(out["selected"], torch.zeros(2, dtype=torch.long))


def test_min_loss_selection_backpropagates_one_mask_only():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    logits = torch.randn(1, 3, 8, 8)
    logits[0, 1] = (target[0, 0] * 2 - 1) * 5  # output 1 is nearly right
    logits.requires_grad_(True)
    iou_pred = torch.full((1, 3), 0.5, requires_grad=True)
    out = sam_loss(logits, iou_pred, target)
    out["loss"].backward()
    assert out["selected"].tolist() == [1]
    assert logits.grad[0, 1].abs().sum() > 0
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    assert (iou_pred.grad != 0).all()  # the IoU head learns all three scores


# ---------------------------------------------------------------------------- clicks


def test_error_points_land_in_the_error_region_with_the_right_label():
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(64, 20, 30, dtype=torch.bool)
    target[:, 5:15, 5:25] = True
    pred = torch.zeros_like(target)
    pred[:32, 5:15, 5:15] = True  # false negatives only
    pred[32:, 0:15, 5:25] = True  # false positives only (rows 0..4)
    pts, labels = clicks.sample_error_points(pred, target, generator=g)
    x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()
    err = pred ^ target
    assert err[torch.arange(64), y, x].all()
    assert (labels[:32, 0] == 1).all() and (labels[32:, 0] == 0).all()
    assert (x[:32] >= 15).all() and (y[32:] < 5).all()
    # a perfect prediction gives a "no point" (label -1)
    _, lab = clicks.sample_error_points(target[:2], target[:2], generator=g)
    assert lab.tolist() == [[-1], [-1]]
    # clicks never land outside the valid (unpadded) area
    valid = torch.zeros_like(target)
    valid[:, :, :20] = True
    pts, _ = clicks.sample_error_points(pred, target, valid, generator=g)
    assert (pts[:, 0, 0] < 20).all()


def test_first_points_inside_masks_and_boxes_with_capped_noise():
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(200, 50, 60, dtype=torch.bool)
    masks[:, 10:30, 20:50] = True
    pts, labels = clicks.sample_points_in_masks(masks, g)
    assert masks[torch.arange(200), pts[:, 0, 1].long(), pts[:, 0, 0].long()].all()
    assert (labels == 1).all()
    assert clicks.masks_to_boxes(masks[:1]).tolist() == [[20.0, 10.0, 49.0, 29.0]]
    exact = clicks.noisy_boxes(masks[:1], noise=0.0, generator=g)
    assert exact.tolist() == [[20.0, 10.0, 49.0, 29.0]]
    boxes = clicks.noisy_boxes(masks, noise=0.1, max_noise_px=2.0, generator=g)
    dev = (boxes - clicks.masks_to_boxes(masks)).abs()
    assert 1.0 < dev.std() < 2.5  # std = min(10% of the side, 2 px) = 2 px (clipping aside)
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_no_point_rounds_one_random_one_last():
    seen = set()
    for s in range(50):
        r = clicks.no_point_rounds(11, 8, torch.Generator().manual_seed(s))
        assert len(r) == 2 and 10 in r
        (other,) = r - {10}
        assert 1 <= other <= 9
        seen.add(other)
    assert len(seen) > 4
    assert clicks.no_point_rounds(9, 8) == set()
    with pytest.raises(ValueError, match="at least"):
        clicks.no_point_rounds(5, 8)


def test_gradient_rounds_first_always_plus_random_others():
    assert clicks.gradient_rounds(11, 0) == set(range(11))  # the paper: every round
    assert clicks.gradient_rounds(11, 11) == set(range(11))
    assert clicks.gradient_rounds(1, 3) == {0}
    seen = set()
    for s in range(40):
        r = clicks.gradient_rounds(11, 3, torch.Generator().manual_seed(s))
        assert len(r) == 3 and 0 in r and r <= set(range(11))
        seen |= r
    assert seen == set(range(11))
    with pytest.raises(ValueError, match="num_graded"):
        clicks.gradient_rounds(11, -1)


# ---------------------------------------------------------------------------- config


def test_config_file_overrides_and_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('steps = 7\ndata = ["procedural:3"]\nlr_decay_steps = [5]\n')
    cfg = load_train_config(p, ["lr=1e-3", "freeze_image_encoder=true"])
    assert cfg.steps == 7 and cfg.lr == 1e-3 and cfg.freeze_image_encoder
    assert cfg.data == ("procedural:3",) and cfg.lr_decay_steps == (5,)
    with pytest.raises(ValueError, match="unknown training config field"):
        load_train_config(p, ["stepz=3"])
    with pytest.raises(ValueError, match="point_rounds"):
        TrainConfig(rounds=3, point_rounds=8)
    with pytest.raises(FileNotFoundError):
        load_train_config(tmp_path / "missing.toml")


def test_shipped_configs_load_and_schedule_inside_the_run():
    from segany.config import ARCHITECTURES

    paths = sorted((ROOT / "configs").glob("*.toml"))
    assert paths
    for path in paths:
        cfg = load_train_config(path)
        assert cfg.model in ARCHITECTURES, path
        assert all(0 < s < cfg.steps for s in cfg.lr_decay_steps), path
        assert cfg.first_prompt_steps < cfg.steps, path


def test_schedule_warmup_then_step_decay():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, lr_decay_steps=(10, 20), lr_decay_factor=0.1)
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(9, cfg) == 1.0
    assert lr_factor(10, cfg) == pytest.approx(0.1) and lr_factor(25, cfg) == pytest.approx(0.01)


def test_layer_decay_and_frozen_encoder(tmp_path):
    sam = segany.build_sam_model(TINY)
    groups = param_groups(sam, TrainConfig(layer_decay=0.5))
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5**4)  # depth 3 + patch embed
    ckpt = _tiny_checkpoint(tmp_path)
    from segany.train.model import build_training_model

    model = build_training_model(TrainConfig(init=str(ckpt), freeze_image_encoder=True))
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())


def test_from_scratch_init_aligns_decoder_queries_and_keys():
    from segany.train.model import DECODER_QK_GAIN, _init_weights

    plain = segany.build_sam_model(TINY)
    sam = segany.build_sam_model(TINY)
    _init_weights(sam)
    assert list(sam.state_dict()) == list(plain.state_dict())  # values only, same names
    attn = [m for m in sam.mask_decoder.transformer.modules() if hasattr(m, "q_proj")]
    assert len(attn) == 3 * TINY.mask_decoder.transformer_depth + 1
    for m in attn:
        assert torch.equal(m.k_proj.weight, m.q_proj.weight)
        assert torch.equal(m.k_proj.bias, m.q_proj.bias)
    ref = [m for m in plain.mask_decoder.transformer.modules() if hasattr(m, "q_proj")]
    ratio = float(attn[0].q_proj.weight.std() / ref[0].q_proj.weight.std())
    assert ratio == pytest.approx(DECODER_QK_GAIN, rel=0.15)
    with pytest.raises(ValueError, match="first_prompt_steps"):
        TrainConfig(first_prompt_steps=-1)
    with pytest.raises(ValueError, match="grad_rounds"):
        TrainConfig(rounds=3, grad_rounds=4)


# ---------------------------------------------------------------------------- runs


def _tiny_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_init.pth"
    if not path.exists():
        torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), path)
    return path


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {
        "init": str(_tiny_checkpoint(tmp_path)),
        "data": ("procedural:3:5",),
        "images_per_step": 1,
        "max_masks_per_image": 4,
        "rounds": 3,
        "point_rounds": 1,
        "lr": 2e-3,
        "warmup_steps": 0,
        "steps": 4,
        "precision": "fp32",
        "log_every": 1,
        "checkpoint_every": 2,
        "out_dir": str(tmp_path / "run"),
    }
    base.update(kw)
    return TrainConfig(**base)


def _model_and_first_batch(cfg: TrainConfig):
    """The model of ``cfg.init`` in training mode and its step-0 batch."""
    from segany.train.data import StepBatches, open_training_data

    sam = segany.load_model(cfg.init, precision="fp32", device="cpu").train()
    batch = StepBatches(
        open_training_data(cfg.data),
        cfg,
        img_size=sam.image_encoder.img_size,
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
    ).batch(0)
    return sam, batch


@pytest.mark.parametrize("grad_rounds", [0, 2])
def test_only_graded_rounds_carry_gradient_and_loss(tmp_path, monkeypatch, grad_rounds):
    from segany.train import engine

    cfg = _cfg(tmp_path, grad_rounds=grad_rounds)
    sam, batch = _model_and_first_batch(cfg)
    calls = []
    real = engine.sam_loss

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append((torch.is_grad_enabled(), out["loss"].requires_grad))
        return out

    monkeypatch.setattr(engine, "sam_loss", spy)
    out = engine.InteractiveSam(sam, cfg)(batch, seed=3)
    groups = len(calls) // cfg.rounds
    graded = [calls[r * groups][0] for r in range(cfg.rounds)]
    assert graded[0]  # the first prompt always trains
    assert sum(graded) == (grad_rounds or cfg.rounds)
    assert all(
        c == (g, g) for r, g in enumerate(graded) for c in calls[r * groups : (r + 1) * groups]
    )
    out["loss"].backward()
    assert sam.mask_decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0
    assert 0 <= float(out["iou_last"]) <= 1


@pytest.mark.parametrize("next_mask", ["predicted", "min_loss"])
def test_round_two_gets_the_most_confident_mask_as_in_the_paper(tmp_path, monkeypatch, next_mask):
    from segany.train import engine

    cfg = _cfg(
        tmp_path,
        next_mask=next_mask,
        box_probability=0.0,
        loss_resolution="low",
        max_masks_per_image=8,
        data=("procedural:3:1",),
    )
    sam, batch = _model_and_first_batch(cfg)
    losses, mask_inputs = [], []
    real = engine.sam_loss

    def spy(logits, iou_pred, *args, **kw):
        out = real(logits, iou_pred, *args, **kw)
        losses.append((logits.detach(), iou_pred.detach(), out["selected"]))
        return out

    monkeypatch.setattr(engine, "sam_loss", spy)
    sam.prompt_encoder.register_forward_pre_hook(lambda m, args: mask_inputs.append(args[2]))
    engine.InteractiveSam(sam, cfg)(batch, seed=3)
    logits, iou_pred, min_loss = losses[0]  # round 1: three masks per point
    assert logits.shape[1] == 3 and mask_inputs[0] is None
    confident = iou_pred.argmax(1)
    assert (confident != min_loss).any()  # else this test could not tell the two apart
    pick = confident if next_mask == "predicted" else min_loss
    rows = torch.arange(len(pick))
    torch.testing.assert_close(mask_inputs[1], logits[rows, pick][:, None], rtol=0, atol=0)


def test_progressive_resizing_small_input_then_model_size(tmp_path):
    from segany.modeling import PromptEncoder
    from segany.train import engine
    from segany.train.data import StepBatches, open_training_data

    full, small = TINY.image_encoder.img_size, TINY.image_encoder.img_size // 2
    cfg = _cfg(tmp_path, small_input_steps=2, small_input_size=small)
    sam = segany.load_model(cfg.init, precision="fp32", device="cpu").train()
    stream = StepBatches(
        open_training_data(cfg.data),
        cfg,
        img_size=full,
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
    )
    b0, b2 = stream.batch(1), stream.batch(2)
    assert b0["images"].shape[-2:] == b0["targets"].shape[-2:] == (small, small)
    assert b2["images"].shape[-2:] == (full, full)
    out = engine.InteractiveSam(sam, cfg)(b0, seed=0)  # all 3 rounds, mask prompts included
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert sam.image_encoder.pos_embed.grad.abs().sum() > 0  # through the resampled embedding

    # A prompt drawn in the small frame embeds as the same point of the image that a prompt
    # encoder built for the small frame sees; the small grid's dense PE is that encoder's.
    pe = sam.prompt_encoder
    grid = full // 8
    ref = PromptEncoder(
        embed_dim=pe.embed_dim,
        image_embedding_size=(grid // 2, grid // 2),
        input_image_size=(small, small),
        mask_in_chans=8,
    )
    ref.load_state_dict(pe.state_dict())
    xy = torch.tensor([[[0.0, 0.0], [small - 1.0, 17.0]]])
    lab = torch.ones(1, 2, dtype=torch.int64)
    with torch.no_grad():
        got, _ = pe((clicks.rescale_coords(xy, full / small), lab), None, None)
        want, _ = ref((xy, lab), None, None)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(pe.pe_layer((grid // 2, grid // 2))[None], ref.get_dense_pe())
    with pytest.raises(ValueError, match="small_input_size must be a multiple"):
        engine.InteractiveSam(sam, _cfg(tmp_path, small_input_steps=1, small_input_size=60))


def test_short_training_run_lowers_the_loss(tmp_path):
    cfg = _cfg(tmp_path, data=("procedural:1:3",), steps=30, max_masks_per_image=3)
    train(cfg, device="cpu", progress=False)
    losses = [r["loss"] for r in read_log(Path(cfg.out_dir) / "log.jsonl")]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    out = Path(cfg.out_dir)
    assert (out / "curves.png").stat().st_size > 1000
    model = segany.load_model(out / "model.safetensors", precision="fp32", device="cpu")
    assert model.image_encoder.img_size == TINY.image_encoder.img_size


def test_trainable_prefixes_refit_the_iou_head_and_leave_masks_alone(tmp_path):
    head = "mask_decoder.iou_prediction_head"
    cfg = _cfg(tmp_path, trainable=(head,), rounds=1, steps=3)
    train(cfg, device="cpu", progress=False)
    before = segany.load_model(cfg.init, precision="fp32", device="cpu").state_dict()
    model = segany.load_model(Path(cfg.out_dir) / "model.safetensors", precision="fp32")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(head + ".") for k in changed), changed
    with pytest.raises(ValueError, match="match no parameter"):
        train(_cfg(tmp_path, trainable=("mask_decoder.no_such_head",)), device="cpu")
    frozen_only = _cfg(tmp_path, trainable=("image_encoder.neck",), freeze_image_encoder=True)
    with pytest.raises(ValueError, match="nothing to train"):
        train(frozen_only, device="cpu")


VAL = {"val_data": ("procedural:3:11",), "val_images": 3, "val_masks_per_image": 2}


def _val_masks(cfg: TrainConfig) -> int:
    """The masks a validation pass evaluates: up to ``val_masks_per_image`` non-empty masks of
    each of the first ``val_images`` images."""
    from segany.train.data import open_training_data

    data = open_training_data(cfg.val_data)
    cap, n = cfg.val_masks_per_image, min(len(data), cfg.val_images)
    count = sum(min(int(data[i].masks.any(axis=(1, 2)).sum()), cap) for i in range(n))
    assert count > 0  # else the validation tests would check nothing
    return count


def test_validation_during_training_logs_miou_and_keeps_the_best_model(tmp_path):
    cfg = _cfg(tmp_path, steps=6, val_every=3, val_clicks=(1, 2), **VAL)
    train(cfg, device="cpu", progress=False)
    out = Path(cfg.out_dir)
    val = read_log(out / "val.jsonl")
    assert [r["step"] for r in val] == [3, 6]
    for r in val:
        assert r["clicks"] == [1, 2] and r["masks"] == _val_masks(cfg)
        assert all(0 <= x <= 1 for x in r["top"] + r["oracle"])
        assert r["oracle"][0] >= r["top"][0]  # best of 3 vs the top-scored one of the same 3
        assert r["score"] == pytest.approx(sum(r["top"]) / 2, abs=1e-4)
    best = [r for r in val if r.get("best")]
    assert best[0]["step"] == 3 and best[-1]["score"] == max(r["score"] for r in val)
    assert (out / "model_best.safetensors").exists()
    with pytest.raises(ValueError, match="val_clicks"):
        _cfg(tmp_path, val_clicks=(2, 1))


def test_validation_shards_add_up_to_the_whole(tmp_path):
    from segany.train.data import open_training_data
    from segany.train.validate import validation_record, validation_sums

    cfg = _cfg(tmp_path, **VAL)
    sam = segany.load_model(cfg.init, precision="fp32", device="cpu").train()
    data = open_training_data(cfg.val_data)
    whole = validation_sums(sam, data, cfg)
    shards = validation_sums(sam, data, cfg, 0, 2) + validation_sums(sam, data, cfg, 1, 2)
    torch.testing.assert_close(shards, whole)
    assert sam.training  # put back in training mode
    assert validation_sums(sam, data, cfg, 5, 8).abs().sum() == 0  # no images for this rank
    rec = validation_record(whole, cfg)
    assert rec["masks"] == _val_masks(cfg) and len(rec["top"]) == len(rec["oracle"]) == 3


def test_resume_gives_the_same_next_step_loss(tmp_path):
    # first_prompt_steps=3: steps 1-3 are first-prompt-only, the resume lands inside that phase
    full = _cfg(tmp_path, out_dir=str(tmp_path / "full"), first_prompt_steps=3, val_every=2, **VAL)
    train(full, device="cpu", progress=False)
    parts = _cfg(
        tmp_path, out_dir=str(tmp_path / "parts"), first_prompt_steps=3, val_every=2, **VAL
    )
    train(parts, device="cpu", progress=False, max_time_s=0.0)  # out of time after step 1
    assert [r["step"] for r in read_log(tmp_path / "parts" / "log.jsonl")] == [1]
    train(parts, device="cpu", progress=False, max_steps=1)  # "interrupted" after step 2
    assert not (tmp_path / "parts" / "model.safetensors").exists()  # written only when done
    assert json.loads((tmp_path / "parts" / "config.json").read_text())["steps"] == 4
    train(parts, device="cpu", progress=False)  # resumes from checkpoints/last.pt
    a = read_log(tmp_path / "full" / "log.jsonl")
    b = read_log(tmp_path / "parts" / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    times = [r["time_s"] for r in b]
    assert times == sorted(times)  # wall time carries over the resume instead of restarting
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-7)
    assert [r["rounds"] for r in a] == [1, 1, 1, 3]  # the curriculum, then all 3 rounds
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "model.safetensors")
    wb = load_file(tmp_path / "parts" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # validation (steps 2 and 4) neither disturbs the exact resume nor forgets the best score
    va, vb = read_log(tmp_path / "full" / "val.jsonl"), read_log(tmp_path / "parts" / "val.jsonl")
    assert [r["step"] for r in vb] == [2, 4]
    np.testing.assert_allclose([r["top"] for r in va], [r["top"] for r in vb], atol=1e-4)
    assert [bool(r.get("best")) for r in va] == [bool(r.get("best")) for r in vb]


def test_torchrun_two_processes_gloo(tmp_path):
    cfg = _cfg(tmp_path, steps=2, out_dir=str(tmp_path / "ddp"), **VAL)
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "segany",
        "train",
        str(path),
        "--device",
        "cpu",
        "--no-progress",
    ]
    # out of time after step 1 on both ranks (the flag is all-reduced), then resumed to the end
    for extra, steps in ((["--max-time", "0"], [1]), ([], [1, 2])):
        proc = subprocess.run(
            cmd + extra, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("\nmodel: ") == 1  # rank 0 reports, once
        log = read_log(tmp_path / "ddp" / "log.jsonl")
        assert [r["step"] for r in log] == steps
        assert (tmp_path / "ddp" / "model.safetensors").exists() == (steps == [1, 2])
    # validation at the end, each rank on its share of the images, all-reduced: the same
    # numbers as one process evaluating all of them
    from segany.train.data import open_training_data
    from segany.train.validate import validation_record, validation_sums

    (val,) = read_log(tmp_path / "ddp" / "val.jsonl")
    sam = segany.load_model(tmp_path / "ddp" / "model.safetensors", precision="fp32", device="cpu")
    ref = validation_record(validation_sums(sam, open_training_data(cfg.val_data), cfg), cfg)
    assert val["masks"] == ref["masks"] == _val_masks(cfg)
    assert val["top"] == pytest.approx(ref["top"], abs=2e-4)
    assert val["oracle"] == pytest.approx(ref["oracle"], abs=2e-4)


def test_train_cli_bad_config_exits_2(tmp_path, capsys):
    from segany.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text("steps = -1\n")
    assert main(["train", str(bad)]) == 2
    assert "steps must be positive" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
