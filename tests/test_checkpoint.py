"""Checkpoint reading, strict loading, architecture inference and refusal of unsafe pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import segany
from segany.checkpoint import CheckpointError, infer_config, load_into, read_state_dict
from segany.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from tests.helpers import TINY, randomize_


def _save(sd, path):
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_names_and_shapes_equal_official(variant):
    """Every parameter/buffer name and shape equals the official model's (built on the meta
    device, so vit_h costs no memory); the config is recovered from the state dict."""
    from segment_anything import sam_model_registry as official_registry

    with torch.device("meta"):
        ours = segany.build_sam_model(segany.get_config(variant)).state_dict()
        theirs = official_registry[variant]().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert infer_config(ours, name=variant) == segany.get_config(variant)


def test_strict_load_of_official_format_file(tmp_path, tiny_pair):
    official, _ = tiny_pair
    path = _save(official.state_dict(), tmp_path / "sam_tiny.pth")
    model = segany.load_model(path, precision="fp32", device="cpu")
    for k, v in official.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.image_encoder.img_size == 128
    assert not model.training


def test_safetensors_and_wrapped_checkpoints(tmp_path, tiny_pair):
    official, _ = tiny_pair
    sd = {k: v.contiguous() for k, v in official.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    assert read_state_dict(tmp_path / "m.safetensors").keys() == sd.keys()
    _save({"model": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    assert read_state_dict(tmp_path / "ddp.pth").keys() == sd.keys()


UNUSUAL = SamConfig(
    name="unusual",
    image_encoder=ImageEncoderConfig(
        img_size=96,
        patch_size=12,
        embed_dim=48,
        depth=5,
        num_heads=3,
        mlp_ratio=2.0,
        window_size=3,
        global_attn_indexes=(0, 3),
    ),
    prompt_embed_dim=24,
    prompt_encoder=PromptEncoderConfig(mask_in_chans=12),
    mask_decoder=MaskDecoderConfig(
        num_multimask_outputs=2,
        transformer_depth=1,
        transformer_mlp_dim=40,
        attention_downsample_rate=1,
        iou_head_depth=2,
        iou_head_hidden_dim=20,
    ),
)


@pytest.mark.parametrize("cfg", [TINY, UNUSUAL])
def test_infer_config_roundtrip(cfg):
    sd = segany.build_sam_model(cfg).state_dict()
    inferred = infer_config(sd, name=cfg.name)
    assert inferred == cfg


def test_unusual_model_loads_and_predicts(tmp_path):
    model = randomize_(segany.build_sam_model(UNUSUAL), 3)
    path = _save(model.state_dict(), tmp_path / "odd.pth")
    loaded = segany.load_model(path, precision="fp32", device="cpu")
    p = segany.SamPredictor(loaded)
    p.set_image(torch.randint(0, 255, (50, 70, 3), dtype=torch.uint8).numpy())
    masks, scores, low = p.predict(point_coords=[[10, 20]], point_labels=[1])
    assert masks.shape == (2, 50, 70) and scores.shape == (2,) and low.shape == (2, 32, 32)


def test_mismatched_checkpoint_lists_keys(tmp_path, tiny_pair):
    official, _ = tiny_pair
    sd = dict(official.state_dict())
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 7)
    model = segany.build_sam_model(TINY)
    with pytest.raises(CheckpointError) as e:
        load_into(model, sd, source="bad.pth")
    msg = str(e.value)
    assert "missing keys (1): mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 7) vs model (1, 32)" in msg


def test_wrong_variant_gives_clear_error(tmp_path, tiny_pair):
    path = _save(tiny_pair[0].state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        segany.build_sam("vit_b", path, precision="fp32", device="cpu")


def test_truncated_checkpoint(tmp_path, tiny_pair):
    path = _save(tiny_pair[0].state_dict(), tmp_path / "t.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        segany.load_model(path)
    (tmp_path / "junk.pth").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "junk.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/segany_pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = "/tmp/segany_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(path)
    torch.save({"a": torch.zeros(1), "obj": _Evil()}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(tmp_path / "evil2.pth")
    assert not os.path.exists(marker)


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a SAM state dict"):
        segany.load_model(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        segany.load_model(tmp_path / "missing.pth")


def test_load_model_variant_uses_cache_without_network(tmp_path, monkeypatch, tiny_pair):
    """A variant name resolves through the hub cache; nothing is downloaded in tests."""
    from segany import hub

    calls = []

    def fake_download(variant, **kw):
        calls.append(variant)
        return _save(tiny_pair[0].state_dict(), tmp_path / "ckpt.pth")

    monkeypatch.setattr(hub, "download_checkpoint", fake_download)
    with pytest.raises(CheckpointError, match="shape mismatches"):  # tiny weights, vit_b arch
        segany.load_model("vit_b", precision="fp32")
    assert calls == ["vit_b"]


def test_unknown_variant_and_precision():
    with pytest.raises(ValueError, match="unknown SAM architecture"):
        segany.build_sam("vit_x")
    with pytest.raises(ValueError, match="precision must be one of"):
        segany.build_sam(TINY, precision="int3")


def test_build_sam_official_call_forms(tmp_path, tiny_pair):
    """``build_sam(path)`` and ``build_sam(checkpoint=path)`` (official forms) infer the
    architecture from the file."""
    path = _save(tiny_pair[0].state_dict(), tmp_path / "tiny.pth")
    for model in (
        segany.build_sam(str(path), precision="fp32", device="cpu"),
        segany.build_sam(checkpoint=path, precision="fp32", device="cpu"),
    ):
        assert model.image_encoder.img_size == 128
        assert torch.equal(
            model.state_dict()["mask_decoder.iou_token.weight"],
            tiny_pair[0].state_dict()["mask_decoder.iou_token.weight"],
        )
