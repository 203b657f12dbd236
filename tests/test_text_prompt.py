"""The prompt encoder's text path: absent means official, present but unused means unchanged,
and a text prompt alone or with points goes through Sam, the checkpoint loader and the
predictor (batched equals one by one)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.checkpoint import infer_config
from segany.data.datasets import open_dataset
from segany.predictor import SamPredictor
from tests.helpers import TINY, official_from_config, random_image, randomize_

D = 10


def _text_cfg(d: int = D):
    return dataclasses.replace(
        TINY, prompt_encoder=dataclasses.replace(TINY.prompt_encoder, text_embed_dim=d)
    )


def _pair(seed: int = 0):
    """A model with a text path and the same model without it (same shared weights)."""
    text = randomize_(segany.build_sam_model(_text_cfg()), seed).eval()
    plain = segany.build_sam_model(TINY).eval()
    sd = {k: v for k, v in text.state_dict().items() if "text_" not in k}
    plain.load_state_dict(sd, strict=True)
    return text, plain


def _prompts():
    g = torch.Generator().manual_seed(1)
    pts = (torch.rand(2, 3, 2, generator=g) * 100, torch.tensor([[1, 0, 1], [1, 1, -1]]))
    box = torch.tensor([[10.0, 12.0, 80.0, 90.0], [0.0, 5.0, 50.0, 60.0]])
    mask = torch.randn(2, 1, 64, 64, generator=g)
    return pts, box, mask


def test_without_text_the_state_dict_is_the_official_one():
    plain = segany.build_sam_model(TINY)
    official = official_from_config(TINY)
    assert list(plain.state_dict()) == list(official.state_dict())
    assert not plain.prompt_encoder.has_text
    text = segany.build_sam_model(_text_cfg())
    extra = set(text.state_dict()) - set(plain.state_dict())
    assert extra == {
        "prompt_encoder.text_projection.weight",
        "prompt_encoder.text_projection.bias",
        "prompt_encoder.text_embed.weight",
    }


def test_text_weights_without_a_text_prompt_change_nothing():
    text, plain = _pair()
    pts, box, mask = _prompts()
    for args in [(pts, None, None), (None, box, None), (pts, box, mask), (None, None, mask)]:
        a = text.prompt_encoder(*args)
        b = plain.prompt_encoder(*args)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    img = torch.from_numpy(random_image(96, 128)).permute(2, 0, 1).float()
    rec = {"image": img, "original_size": (96, 128), "point_coords": pts[0], "point_labels": pts[1]}
    with torch.no_grad():
        out_a = text([rec], multimask_output=True)[0]
        out_b = plain([rec], multimask_output=True)[0]
    for k in out_a:
        assert torch.equal(out_a[k], out_b[k]), k


def test_a_fresh_text_token_carries_its_content_at_the_scale_of_the_other_tokens():
    torch.manual_seed(0)
    pe = segany.build_sam_model(_text_cfg(64)).prompt_encoder
    t = torch.nn.functional.normalize(torch.randn(32, 64), dim=-1)
    with torch.no_grad():
        content = pe.text_projection(t)  # what differs between two phrases
        rms = content.pow(2).mean().sqrt()
        type_rms = pe.text_embed.weight.pow(2).mean().sqrt()
    assert 0.5 < float(rms / type_rms) < 2.0
    assert torch.equal(pe.text_projection.bias, torch.zeros_like(pe.text_projection.bias))


def test_the_text_token_is_the_normalised_projection_plus_the_type_embedding():
    pe = segany.build_sam_model(_text_cfg(2)).prompt_encoder
    c = pe.embed_dim
    with torch.no_grad():
        pe.text_projection.weight.zero_()
        pe.text_projection.weight[0, 0] = 2.0
        pe.text_projection.weight[1, 1] = -1.0
        pe.text_projection.bias.fill_(0.5)
        pe.text_embed.weight.zero_()
        pe.text_embed.weight[0, 2] = 3.0
    t = torch.tensor([[3.0, 4.0]])  # |t| = 5 -> (0.6, 0.8)
    sparse, dense = pe(None, None, None, text=t)
    expected = torch.full((c,), 0.5)
    expected[0] += 1.2
    expected[1] -= 0.8
    expected[2] += 3.0
    assert sparse.shape == (1, 1, c)
    torch.testing.assert_close(sparse[0, 0], expected)
    assert torch.equal(dense[0, :, 0, 0], pe.no_mask_embed.weight[0])
    # scale does not matter (the embedding is normalised); the token comes first
    torch.testing.assert_close(pe(None, None, None, text=10 * t)[0], sparse)
    pts = (torch.tensor([[[5.0, 6.0]]]), torch.tensor([[1]]))
    with_pts = pe(pts, None, None, text=t)[0]
    assert with_pts.shape == (1, 3, c)  # text, point, padding point
    torch.testing.assert_close(with_pts[:, :1], sparse)
    torch.testing.assert_close(with_pts[:, 1:], pe(pts, None, None)[0])


def test_bad_text_inputs_are_refused():
    plain = segany.build_sam_model(TINY).prompt_encoder
    with pytest.raises(ValueError, match="no text path"):
        plain(None, None, None, text=torch.ones(1, D))
    pe = segany.build_sam_model(_text_cfg()).prompt_encoder
    with pytest.raises(ValueError, match=r"must be \(B, 10\)"):
        pe(None, None, None, text=torch.ones(1, 7))
    with pytest.raises(ValueError, match="3 prompt set"):
        pe(_prompts()[0], None, None, text=torch.ones(3, D))
    with pytest.raises(ValueError, match="positive int"):
        dataclasses.replace(TINY.prompt_encoder, text_embed_dim=0)


def test_gradients_reach_the_text_path():
    text, _ = _pair()
    text.train()
    sparse, _ = text.prompt_encoder(None, None, None, text=torch.randn(2, D))
    sparse.sum().backward()
    assert text.prompt_encoder.text_projection.weight.grad.abs().sum() > 0
    assert text.prompt_encoder.text_embed.weight.grad.abs().sum() > 0


def test_checkpoint_with_text_weights_loads_by_inference(tmp_path):
    text, _ = _pair()
    path = tmp_path / "text.pth"
    torch.save(text.state_dict(), path)
    cfg = infer_config(torch.load(path, weights_only=True))
    assert cfg.prompt_encoder.text_embed_dim == D
    loaded = segany.load_model(path, precision="fp32", device="cpu")
    for k, v in text.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    plain_path = tmp_path / "plain.pth"
    torch.save(segany.build_sam_model(TINY).state_dict(), plain_path)
    assert (
        infer_config(torch.load(plain_path, weights_only=True)).prompt_encoder.text_embed_dim
        is None
    )


class _Words:
    """A tiny deterministic text encoder (the predictor's duck-typed interface)."""

    def encode_text(self, texts):
        out = torch.zeros(len(texts), D)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, sum(map(ord, w)) % D] += 1.0
        return out


def test_predictor_text_alone_with_points_and_batched():
    text, _ = _pair(3)
    pred = SamPredictor(text, text_encoder=_Words())
    image = random_image(90, 120, seed=2)
    pred.set_image(image)
    masks, scores, low = pred.predict(text="the red star")
    assert masks.shape == (3, 90, 120) and scores.shape == (3,) and low.shape == (3, 64, 64)
    emb = _Words().encode_text(["the red star"])[0].numpy()
    same = pred.predict(text_embedding=emb)
    for a, b in zip((masks, scores, low), same, strict=True):
        np.testing.assert_array_equal(a, b)
    # batched phrases equal one by one, with and without points
    phrases = ["the red star", "the blue ellipse", "the small green blob"]
    pts = np.array([[[30, 40]], [[60, 20]], [[100, 70]]], np.float64)
    labels = np.ones((3, 1), np.int64)
    for kw in ({}, {"point_coords": pts, "point_labels": labels}):
        bm, bs, bl = pred.predict(text=phrases, **kw)
        assert bm.shape == (3, 3, 90, 120)
        for i, p in enumerate(phrases):
            one = {k: v[i] for k, v in kw.items()}
            m, s, lo = pred.predict(text=p, **one)
            np.testing.assert_array_equal(bm[i], m)
            np.testing.assert_allclose(bs[i], s, rtol=0, atol=1e-6)
            np.testing.assert_allclose(bl[i], lo, rtol=0, atol=1e-5)
    # text changes the answer for the same point
    pt = {"point_coords": pts[0], "point_labels": labels[0]}
    assert not np.array_equal(pred.predict(**pt)[2], pred.predict(text=phrases[0], **pt)[2])
    # predict_batch over two images
    pred.set_image_batch([image, random_image(64, 64, seed=5)])
    out = pred.predict_batch(text=["the red star", ["a", "b"]])
    assert out[0][0].shape == (3, 90, 120) and out[1][0].shape == (2, 3, 64, 64)
    pred.set_image(image)
    # (an image encoded in a batch of two differs from it encoded alone by float rounding)
    np.testing.assert_allclose(out[0][2], pred.predict(text="the red star")[2], atol=1e-5)


def test_predictor_text_errors():
    text, plain = _pair()
    image = random_image(64, 64)
    p = SamPredictor(plain, text_encoder=_Words())
    p.set_image(image)
    with pytest.raises(ValueError, match="no text path"):
        p.predict(text="the red star")
    with pytest.raises(ValueError, match="no text path"):
        p.predict(text_embedding=np.ones(D))
    q = SamPredictor(text)
    q.set_image(image)
    with pytest.raises(ValueError, match="needs a text encoder"):
        q.predict(text="the red star")
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        q.predict(text_embedding=np.ones(4))
    with pytest.raises(ValueError, match="not both"):
        r = SamPredictor(text, text_encoder=_Words())
        r.set_image(image)
        r.predict(text="x", text_embedding=np.ones(D))
    with pytest.raises(ValueError, match="non-zero"):
        q.predict(text_embedding=np.zeros(D))


def test_sam_forward_takes_a_text_embedding():
    text, _ = _pair(4)
    img = torch.from_numpy(random_image(128, 96)).permute(2, 0, 1).float()
    t = torch.randn(D)
    with torch.no_grad():
        out = text([{"image": img, "original_size": (128, 96), "text_embedding": t}], True)[0]
        sparse, dense = text.prompt_encoder(None, None, None, text=t[None])
    assert out["masks"].shape == (1, 3, 128, 96) and out["iou_predictions"].shape == (1, 3)
    assert sparse.shape[1] == 1


def _clip_file(tmp_path, embed_dim=D):
    from segany.data.captions import VOCABULARY
    from segany.text import SmallClip, SmallClipConfig, save_small_clip

    cfg = SmallClipConfig(embed_dim=embed_dim, widths=(8, 16), text_width=16, words=VOCABULARY)
    path = tmp_path / "clip.safetensors"
    save_small_clip(SmallClip(cfg), path)
    return path


def test_load_text_encoder_specs(tmp_path):
    from segany.text import SmallClip, load_text_encoder

    enc = load_text_encoder(_clip_file(tmp_path))
    assert isinstance(enc, SmallClip) and enc.embed_dim == D
    with pytest.raises(FileNotFoundError, match="small-CLIP"):
        load_text_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="open_clip:MODEL"):
        load_text_encoder("open_clip:")
    with pytest.raises(ValueError, match="no text encoder"):
        load_text_encoder("")


def test_segment_cli_with_text(tmp_path, capsys):
    from PIL import Image

    from segany.cli.main import main

    text, plain = _pair(5)
    ckpt, plain_ckpt = tmp_path / "text.pth", tmp_path / "plain.pth"
    torch.save(text.state_dict(), ckpt)
    torch.save(plain.state_dict(), plain_ckpt)
    img = tmp_path / "img.png"
    Image.fromarray(random_image(70, 90, seed=1)).save(img)
    clip = _clip_file(tmp_path)
    common = ["--device", "cpu", "--precision", "fp32"]
    out = tmp_path / "out"
    rc = main(
        ["segment", str(img), "--text", "the red star", "--text-encoder", str(clip)]
        + ["--model", str(ckpt), "--out", str(out), *common]
    )
    assert rc == 0
    import json

    scores = json.loads((out / "scores.json").read_text())
    assert scores["text"] == "the red star" and len(scores["masks"]) == 3
    # the same through the library
    from segany.text import load_text_encoder

    pred = SamPredictor(segany.load_model(ckpt, precision="fp32"), load_text_encoder(clip))
    pred.set_image(np.asarray(Image.open(img).convert("RGB")))
    _, lib_scores, _ = pred.predict(text="the red star")
    np.testing.assert_allclose(scores["scores"], lib_scores, atol=1e-6)
    capsys.readouterr()
    rc = main(["segment", str(img), "--text", "the red star", "--model", str(plain_ckpt)] + common)
    assert rc == 2 and "has no text path" in capsys.readouterr().err
    rc = main(["segment", str(img), "--text", "the red star", "--model", str(ckpt)] + common)
    assert rc == 2 and "--text-encoder" in capsys.readouterr().err
    rc = main(["segment", str(img), "--text", " ", "--model", str(ckpt)] + common)
    assert rc == 2 and "phrase" in capsys.readouterr().err


def test_eval_text_cli_reports_seen_and_held_out(tmp_path, capsys):
    import json

    from segany.cli.main import main

    cfg = dataclasses.replace(
        _text_cfg(),
        image_encoder=dataclasses.replace(TINY.image_encoder, img_size=128),
    )
    model = randomize_(segany.build_sam_model(cfg), 2)
    ckpt = tmp_path / "text.pth"
    torch.save(model.state_dict(), ckpt)
    clip = _clip_file(tmp_path)
    out = tmp_path / "ev"
    rc = main(
        ["eval", "procedural-text:3:4", "--text", "--text-encoder", str(clip), "--quiet"]
        + ["--model", str(ckpt), "--device", "cpu", "--precision", "fp32", "--out", str(out)]
        + ["--figure", str(tmp_path / "fig.png")]
    )
    assert rc == 0
    figure = np.asarray(Image.open(tmp_path / "fig.png"))
    h, w = open_dataset("procedural-text:1:4").scene(0).image.shape[:2]
    assert figure.shape[0] == 2 * h + 28 and figure.shape[1] // (2 * w) in (3, 4)
    assert figure.shape[1] % (2 * w) == 0
    from segany.eval.text import text_figure

    with pytest.raises(ValueError, match="at least one phrase"):
        text_figure(None, np.zeros((8, 8, 3), np.uint8), [])
    table = capsys.readouterr().out
    assert "| seen |" in table and "| held_out |" in table and "retrieval top-1" in table
    res = json.loads((out / "eval_text.json").read_text())["results"][0]
    n = res["counts"]["seen"] + res["counts"]["held_out"]
    assert n > 0
    for split, m in res["miou"].items():
        if res["counts"][split]:
            assert all(0 <= m[p] <= 1 for p in ("text", "text+point", "point", "region"))
    rc = main(
        ["eval", "procedural:2", "--text", "--text-encoder", str(clip), "--quiet"]
        + ["--model", str(ckpt), "--device", "cpu", "--precision", "fp32"]
    )
    assert rc == 2 and "captioned scenes" in capsys.readouterr().err


def test_a_checkpoint_with_its_text_encoder_beside_it_answers_text(tmp_path):
    """load_model attaches ``<stem>.text.safetensors`` (the bundled layout), outside the state
    dict; the bundling script checks the encoder fits the model's text path."""
    from segany.build import attach_text_encoder, bundled_config, text_encoder_path
    from segany.checkpoint import read_state_dict
    from segany.text import SmallClip
    from segany.train.bundle import bundle_text_encoder

    text, plain = _pair()
    model_path = tmp_path / "model.safetensors"
    segany.train.outputs.save_state_dict(text.state_dict(), model_path)
    clip = _clip_file(tmp_path)
    assert bundle_text_encoder(clip, model_path) == text_encoder_path(model_path)
    assert text_encoder_path(model_path).name == "model.text.safetensors"
    loaded = segany.load_model(model_path, precision="fp32", device="cpu")
    assert isinstance(loaded.text_encoder, SmallClip)
    assert set(loaded.state_dict()) == set(text.state_dict())  # not a submodule
    assert not any(n.startswith("text_encoder") for n, _ in loaded.named_parameters())
    predictor = SamPredictor(loaded)
    predictor.set_image(random_image(48, 64, seed=2))
    masks, scores, _ = predictor.predict(text="the red star", multimask_output=False)
    assert masks.shape == (1, 48, 64) and scores.shape == (1,)
    # without the file beside it: no encoder (text= then asks for one)
    text_encoder_path(model_path).unlink()
    assert getattr(segany.load_model(model_path, device="cpu"), "text_encoder", None) is None
    # a plain model gets none and the script refuses to ship one for it
    plain_path = tmp_path / "plain.safetensors"
    segany.train.outputs.save_state_dict(plain.state_dict(), plain_path)
    with pytest.raises(ValueError, match="no text path"):
        bundle_text_encoder(clip, plain_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="16-dim"):
        bundle_text_encoder(_clip_file(tmp_path / "other", embed_dim=16), model_path)
    # the bundled architecture grows a text path exactly when the weights have one
    sd = read_state_dict(model_path)
    assert bundled_config(sd).prompt_encoder.text_embed_dim == D
    assert bundled_config(read_state_dict(plain_path)).prompt_encoder.text_embed_dim is None
    assert attach_text_encoder(plain, "enc") is plain and plain.text_encoder == "enc"
    assert "text_encoder" not in dict(plain.named_modules())


def test_onnx_text_flavour_equals_the_torch_predictor(tmp_path):
    """A model with a text path exports ``decoder_text.onnx`` beside the official
    ``decoder.onnx`` (untouched interface); the torch-free predictor's text prompts through it
    equal SamPredictor's, alone, with points and batched with boxes."""
    pytest.importorskip("onnxruntime")
    from segany.export import export_onnx
    from segany.io.onnx_manifest import DECODER_INPUTS, DECODER_TEXT_INPUT
    from segany.runtime import OnnxPredictor

    text, _ = _pair(3)
    out = tmp_path / "onnx"
    export_onnx(text, out, name="tiny-text")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_embed_dim"] == D
    dec = manifest["files"]["decoder"]
    assert [i["name"] for i in dec["inputs"]] == list(DECODER_INPUTS)
    flavour = manifest["files"]["decoder_text"]
    assert [i["name"] for i in flavour["inputs"]] == [*DECODER_INPUTS, DECODER_TEXT_INPUT]
    img = random_image(48, 64, seed=4)
    ref = SamPredictor(text)
    ref.set_image(img)
    ours = OnnxPredictor(out)
    ours.set_image(img)
    emb = np.random.default_rng(0).normal(size=(2, D)).astype(np.float32)
    pts = np.array([[10.0, 20.0], [40.0, 30.0]])
    for kw in (
        {"text_embedding": emb[0]},
        {"text_embedding": emb[1], "point_coords": pts, "point_labels": np.array([1, 0])},
        {"text_embedding": emb, "box": np.array([[2.0, 3.0, 30.0, 40.0], [5, 5, 60, 45]])},
    ):
        want = ref.predict(**kw, return_logits=True)
        got = ours.predict(**kw, return_logits=True)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=0)
    # without text the official decoder runs, as before
    want = ref.predict(point_coords=pts, point_labels=np.array([1, 1]), return_logits=True)
    got = ours.predict(point_coords=pts, point_labels=np.array([1, 1]), return_logits=True)
    np.testing.assert_allclose(got[2], want[2], atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match=f"\\({D}"):
        ours.predict(text_embedding=np.zeros(D + 1, np.float32))
