"""The fast paths (attention kernels, folded decoder, bf16) agree with the eager reference."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segany
from segany.modeling import image_encoder
from segany.modeling.image_encoder import LONG_SEQUENCE, biased_attention
from segany.precision import cpu_has_native_bf16, resolve_precision
from tests.helpers import TINY, make_amg_pair, random_image, randomize_


def _eager_biased(q, k, v, rel_h, rel_w, scale):
    b, n, _ = q.shape
    attn = (q * scale) @ k.transpose(1, 2)
    attn = attn + (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(b, n, n)
    return attn.softmax(-1) @ v


@pytest.mark.parametrize("grid", [(7, 9), (40, 40)])  # window-sized and global-sized
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_biased_attention_matches_eager(grid, dtype):
    g = torch.Generator().manual_seed(0)
    h, w = grid
    n = h * w
    assert (n > LONG_SEQUENCE) == (grid == (40, 40))
    q, k, v = (torch.randn(3, n, 16, generator=g) for _ in range(3))
    rel_h, rel_w = torch.randn(3, n, h, generator=g), torch.randn(3, n, w, generator=g)
    ref = _eager_biased(q, k, v, rel_h, rel_w, 0.25)
    out = biased_attention(*(t.to(dtype) for t in (q, k, v, rel_h, rel_w)), 0.25).float()
    tol = 1e-5 if dtype == torch.float32 else 6e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("size", [128, 64])  # 64: a reduced training input (progressive resizing)
def test_encoder_fast_equals_eager(tiny_model, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    enc = copy.deepcopy(tiny_model.image_encoder)
    with torch.no_grad():
        fast = enc(x)
        assert fast.shape[-2:] == (size // 8, size // 8) and torch.isfinite(fast).all()
        enc.set_attention_backend("eager")
        ref = enc(x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        enc.set_attention_backend("flash")


def test_blocked_attention_equals_default(tiny_model, monkeypatch):
    """The ``"blocked"`` backend (what the ONNX export traces) is the default attention's
    function, with the 256-token global attention in blocks of 100 queries (the last shorter)
    and the 25-token windows in one block."""
    monkeypatch.setattr(image_encoder, "BLOCKED_QUERY_BLOCK", 100)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    enc = copy.deepcopy(tiny_model.image_encoder)
    with torch.no_grad():
        ref = enc(x)
        enc.set_attention_backend("blocked")
        assert all(blk.attn.backend == "blocked" for blk in enc.blocks)
        out = enc(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_attention_backend_is_checked(tiny_model):
    """A bad backend is a ValueError naming the allowed ones, whichever way it is set, and
    leaves the backend as it was."""
    enc = copy.deepcopy(tiny_model.image_encoder)
    allowed = r"\('fast', 'eager', 'blocked'\), got 'flash'"
    with pytest.raises(ValueError, match=allowed):
        enc.set_attention_backend("flash")
    with pytest.raises(ValueError, match=allowed):
        enc.blocks[0].attn.backend = "flash"
    assert all(blk.attn.backend == "fast" for blk in enc.blocks)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_decoder_fast_equals_eager(tiny_model, multimask, with_mask):
    g = torch.Generator().manual_seed(2)
    pe = tiny_model.prompt_encoder
    dec = tiny_model.mask_decoder
    emb = torch.randn(1, 32, 16, 16, generator=g)
    coords = torch.rand(3, 2, 2, generator=g) * 128
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    boxes = torch.tensor([[5.0, 5, 60, 70], [0, 0, 127, 127], [30, 10, 90, 40]])
    masks = torch.randn(3, 1, 64, 64, generator=g) if with_mask else None
    sparse, dense = pe((coords, labels), boxes, masks)
    args = dict(
        image_embeddings=emb,
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    with torch.no_grad():
        fast_masks, fast_iou = dec(**args)
    ref_masks, ref_iou = dec(**args)  # autograd on -> reference path
    assert ref_masks.requires_grad
    torch.testing.assert_close(fast_masks, ref_masks.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_iou, ref_iou.detach(), atol=1e-5, rtol=1e-5)
    # single prompts give the batched result
    with torch.no_grad():
        one_masks, _ = dec(
            **{
                **args,
                "sparse_prompt_embeddings": sparse[1:2],
                "dense_prompt_embeddings": dense[1:2],
            }
        )
    torch.testing.assert_close(one_masks[0], fast_masks[1], atol=1e-5, rtol=1e-5)


def test_predictor_fast_equals_eager_decoder(tiny_model):
    model = copy.deepcopy(tiny_model)
    p = segany.SamPredictor(model)
    p.set_image(random_image(70, 110, seed=4))
    kwargs = dict(point_coords=[[20, 30], [80, 40]], point_labels=[1, 0], return_logits=True)
    fast = p.predict(**kwargs)
    model.mask_decoder.backend = "eager"
    ref = p.predict(**kwargs)
    np.testing.assert_allclose(fast[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(fast[1], ref[1], atol=1e-5)


def test_bf16_close_to_fp32():
    fp32 = randomize_(segany.build_sam_model(TINY), 7).eval()
    bf16 = segany.set_precision(copy.deepcopy(fp32), "bf16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.prompt_encoder.no_mask_embed.weight.dtype == torch.float32
    img = random_image(100, 128, seed=3)
    a, b = segany.SamPredictor(fp32), segany.SamPredictor(bf16)
    a.set_image(img)
    b.set_image(img)
    e32, e16 = a.get_image_embedding(), b.get_image_embedding().float()
    assert (e16 - e32).norm() / e32.norm() < 0.03
    m32, s32, l32 = a.predict(point_coords=[[60, 50]], point_labels=[1], return_logits=True)
    m16, s16, l16 = b.predict(point_coords=[[60, 50]], point_labels=[1], return_logits=True)
    assert m16.dtype == np.float32 and s16.dtype == np.float32
    np.testing.assert_allclose(s16, s32, atol=0.02)
    assert np.abs(l16 - l32).mean() < 0.02 * np.abs(l32).mean()
    agree = ((m16 > 0) == (m32 > 0)).mean()
    assert agree > 0.995, agree


def test_precision_resolution(monkeypatch):
    import segany.precision as prec

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("fp16", cpu) == torch.float16
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("int8", cpu) == torch.float32  # the dtype around the int8 layers
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4", cpu)
    with pytest.raises(ValueError, match="device"):
        prec.resolve_device("quantum")


def test_auto_default_and_registry_fp32(vit_b_pair):
    model = segany.build_sam(TINY, device="cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert model.dtype == expected and not model.training
    reg = vit_b_pair[1]  # built by segany.sam_model_registry["vit_b"]()
    assert reg.dtype == torch.float32 and not reg.training


def test_gradients_flow_without_nans(tiny_model):
    model = randomize_(segany.build_sam_model(TINY), 11).train()
    img = torch.randint(0, 255, (2, 3, 128, 128)).float()
    emb = model.image_encoder(model.preprocess(img))
    sparse, dense = model.prompt_encoder(
        (torch.tensor([[[30.0, 40.0]], [[90.0, 20.0]]]), torch.tensor([[1], [1]])), None, None
    )
    masks, iou = model.mask_decoder(
        emb[:1], model.prompt_encoder.get_dense_pe(), sparse[:1], dense[:1], True
    )
    loss = masks.sigmoid().mean() + iou.pow(2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert torch.isfinite(loss)
    # every part of the network that this prompt touches receives finite gradients
    for name in (
        "image_encoder.blocks.1.attn.rel_pos_h",
        "image_encoder.patch_embed.proj.weight",
        "mask_decoder.transformer.layers.0.cross_attn_image_to_token.q_proj.weight",
        "prompt_encoder.point_embeddings.1.weight",
    ):
        assert grads[name] is not None and torch.isfinite(grads[name]).all(), name
        assert grads[name].abs().sum() > 0, name


@pytest.mark.slow
def test_compile_opt_in_keeps_names_and_results(tiny_model):
    """torch.compile (CPU inductor here; the same call is the GPU opt-in) changes neither the
    state-dict names nor the embeddings."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = tiny_model.image_encoder(x)
        compiled = segany.compile_model(copy.deepcopy(tiny_model))
        out = compiled.image_encoder(x)
    assert list(compiled.state_dict()) == list(tiny_model.state_dict())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cached_image_projections_equal_plain_fast_path(depth):
    """The per-image projections (first layer shared, PE halves projected once, residual and
    bias folded into a GEMM) give the transformer's result, for any decoder depth."""
    from segany.modeling.fast_decoder import (
        image_projections,
        image_tokens,
        two_way_transformer_fast,
    )

    decoder = dataclasses.replace(TINY.mask_decoder, transformer_depth=depth)
    cfg = dataclasses.replace(TINY, mask_decoder=decoder)
    model = randomize_(segany.build_sam_model(cfg), 11).eval()
    g = torch.Generator().manual_seed(5)
    pe = model.prompt_encoder
    sparse, dense = pe((torch.rand(5, 3, 2, generator=g) * 128, torch.ones(5, 3)), None, None)
    emb = torch.randn(1, sparse.shape[-1], 16, 16, generator=g)
    tokens = image_tokens(emb, pe.get_dense_pe(), dense[:1])
    tr = model.mask_decoder.transformer
    prompt = torch.cat([torch.randn(5, 4, sparse.shape[-1], generator=g), sparse], 1)
    with torch.no_grad():
        ref_q, ref_k = two_way_transformer_fast(tr, tokens.src, tokens.pe, prompt)
        cached = image_projections(tr, tokens)
        q, k = two_way_transformer_fast(tr, cached.src, cached.pe, prompt, cached.proj)
    assert len(cached.proj.k_pe) == depth - 1
    torch.testing.assert_close(q, ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch 1"):
        image_projections(tr, tokens._replace(src=tokens.src.expand(2, -1, -1)))


@pytest.mark.parametrize("prompts, has_mask", [(1, 1.0), (1, 0.0), (4, None)])
def test_mask_share_on_cached_projections_equals_plain_fast_path(prompts, has_mask):
    """Projections cached with the no-mask embedding plus a mask prompt's share (the mask
    features through the last 1x1 convolution folded into the first layer's projections) give
    the transformer's result on the image tokens with the mask embedding; a scale of 0 is a
    prompt without a mask; several prompts, each with its own mask, share one image's cache."""
    from segany.modeling.fast_decoder import (
        image_projections,
        image_tokens,
        mask_share,
        two_way_transformer_fast,
    )

    model = randomize_(segany.build_sam_model(TINY), 12).eval()
    g = torch.Generator().manual_seed(7)
    pe, tr = model.prompt_encoder, model.mask_decoder.transformer
    conv, no_mask = pe.mask_downscaling[-1], pe.no_mask_embed.weight[0]
    coords = torch.rand(prompts, 3, 2, generator=g) * 128
    sparse, _ = pe((coords, torch.ones(prompts, 3)), None, None)
    emb = torch.randn(1, sparse.shape[-1], 16, 16, generator=g)
    masks = 4 * torch.randn(prompts, 1, 64, 64, generator=g)
    prompt = torch.cat([torch.randn(prompts, 4, sparse.shape[-1], generator=g), sparse], 1)
    scale = None if has_mask is None else torch.tensor([has_mask])
    with torch.no_grad():
        features = pe.mask_downscaling[:-1](masks)
        dense = conv(features)
        if scale is not None:
            dense = scale * dense + (1 - scale) * no_mask.reshape(1, -1, 1, 1)
        tokens = image_tokens(emb, pe.get_dense_pe(), dense)  # one per prompt
        ref_q, ref_k = two_way_transformer_fast(tr, tokens.src, tokens.pe, prompt)
        plain = image_tokens(emb, pe.get_dense_pe(), no_mask.reshape(1, -1, 1, 1))
        cached = image_projections(tr, plain)
        share = mask_share(tr, conv, no_mask, features, scale)
        q, k = two_way_transformer_fast(tr, tokens.src, tokens.pe, prompt, cached.proj, share)
    torch.testing.assert_close(q, ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)
    assert share.features.shape == (prompts, 256, features.shape[1])
    with pytest.raises(ValueError, match="pass proj too"):
        two_way_transformer_fast(tr, tokens.src, tokens.pe, prompt, None, share)
    with pytest.raises(ValueError, match="one scale"):
        mask_share(tr, conv, no_mask, features[:1].expand(2, -1, -1, -1), torch.ones(2))


@pytest.mark.parametrize("min_iou", [None, "median"])
def test_decode_chunks_do_not_change_results(tiny_model, min_iou):
    """decode run in chunks of 1, 3 or 64 prompts gives the same masks, IoUs and rows."""
    g = torch.Generator().manual_seed(6)
    pe, dec = tiny_model.prompt_encoder, tiny_model.mask_decoder
    sparse, dense = pe((torch.rand(7, 1, 2, generator=g) * 128, torch.ones(7, 1)), None, None)
    emb = torch.randn(1, sparse.shape[-1], 16, 16, generator=g)
    image = dec.prepare_image(emb, pe.get_dense_pe(), dense[:1])
    with torch.no_grad():
        _, iou, _ = dec.decode(image, sparse, True, chunk=64)
        thresh = None if min_iou is None else float(iou.max(1).values.median())
        ref = dec.decode(image, sparse, True, min_iou=thresh, chunk=64)
        for chunk in (1, 3):
            out = dec.decode(image, sparse, True, min_iou=thresh, chunk=chunk)
            torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)
            if thresh is None:
                assert out[2] is None and ref[2] is None
            else:
                assert 0 < len(ref[2]) < 7 and torch.equal(out[2], ref[2])
        # per-prompt image tokens (dense mask prompts) are split with their prompts
        per_prompt = dec.prepare_image(
            emb,
            pe.get_dense_pe(),
            dense[:1] + 0.1 * torch.randn(7, *dense.shape[1:], generator=g),
            cache_projections=False,
        )
        ref = dec.decode(per_prompt, sparse, True, min_iou=thresh, chunk=64)
        out = dec.decode(per_prompt, sparse, True, min_iou=thresh, chunk=3)
        torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)


def _decoder_inputs(model, with_mask: bool):
    """Embeddings and prompts for 5 prompt sets (points and boxes, mask prompts optional),
    none of them requiring grad."""
    g = torch.Generator().manual_seed(12)
    pe = model.prompt_encoder
    coords = torch.rand(5, 2, 2, generator=g) * 128
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 1]])
    corner = torch.rand(5, 2, generator=g) * 60
    boxes = torch.cat([corner, corner + 40], 1)
    masks = torch.randn(5, 1, 64, 64, generator=g) if with_mask else None
    sparse, dense = (t.detach() for t in pe((coords, labels), boxes, masks))
    emb = torch.randn(1, sparse.shape[-1], 16, 16, generator=g)
    return emb, pe.get_dense_pe().detach(), sparse, dense


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_prepare_and_decode_equal_reference_forward(tiny_model, multimask, with_mask):
    """prepare_image + decode (the fast path, projections cached when the image is shared)
    give the reference forward's masks and IoUs; with min_iou, the masks of exactly the prompts
    with some IoU above it; the eager backend's decode is the reference itself."""
    dec = tiny_model.mask_decoder
    emb, pe, sparse, dense = _decoder_inputs(tiny_model, with_mask)
    ref_masks, ref_iou = dec(emb, pe, sparse, dense, multimask)  # autograd on -> reference
    assert ref_masks.requires_grad
    ref_masks, ref_iou = ref_masks.detach(), ref_iou.detach()
    image = dec.prepare_image(
        emb, pe, dense if with_mask else dense[:1], cache_projections=not with_mask
    )
    best = ref_iou.max(1).values.sort().values
    thresh = float(best[2] + best[3]) / 2  # between two prompts' best IoUs, far from both
    eager = copy.deepcopy(dec)
    eager.backend = "eager"
    with torch.no_grad():
        masks, iou, rows = dec.decode(image, sparse, multimask)
        assert rows is None
        torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
        sel_masks, sel_iou, rows = dec.decode(image, sparse, multimask, min_iou=thresh)
        expected = torch.nonzero((ref_iou > thresh).any(1))[:, 0]
        assert 0 < len(rows) < 5 and torch.equal(rows, expected)
        torch.testing.assert_close(sel_iou, ref_iou, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sel_masks, ref_masks[expected], atol=1e-4, rtol=1e-4)
        masks, iou, rows = eager.decode(image, sparse, multimask, min_iou=thresh)
    assert torch.equal(rows, expected)
    assert torch.equal(masks, ref_masks[expected]) and torch.equal(iou, ref_iou)


def test_fast_path_only_where_autograd_records_nothing(tiny_model):
    """With grad mode on, the fast path still runs when nothing requires grad (a frozen
    decoder); an input that requires grad gets the reference (and its gradients)."""
    emb, pe, sparse, dense = _decoder_inputs(tiny_model, False)
    frozen = copy.deepcopy(tiny_model.mask_decoder).requires_grad_(False)
    with torch.no_grad():
        fast = frozen(emb, pe, sparse, dense, True)
    masks, iou = frozen(emb, pe, sparse, dense, True)
    assert not masks.requires_grad
    assert torch.equal(masks, fast[0]) and torch.equal(iou, fast[1])
    masks, _ = frozen(emb.requires_grad_(), pe, sparse, dense, True)
    assert masks.requires_grad
    masks.sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    torch.testing.assert_close(masks.detach(), fast[0], atol=1e-4, rtol=1e-4)


def test_decoder_backend_is_checked(tiny_model):
    dec = copy.deepcopy(tiny_model.mask_decoder)
    with pytest.raises(ValueError, match=r"\('fast', 'eager'\), got 'flash'"):
        dec.backend = "flash"
    assert dec.backend == "fast"
    dec.backend = "eager"
    assert dec.backend == "eager"
    emb, pe, sparse, dense = _decoder_inputs(tiny_model, True)
    with pytest.raises(ValueError, match="shared by all prompts"):
        dec.prepare_image(emb, pe, dense)  # per-prompt mask prompts: nothing to cache


def test_min_iou_is_compared_in_float32():
    """The pre-filter keeps every prompt the generator's float32 filter would keep, also for
    a bf16 decoder whose IoUs sit just above a threshold that bf16 would round up."""
    model = segany.set_precision(randomize_(segany.build_sam_model(TINY), 3).eval(), "bf16")
    dec = model.mask_decoder
    emb, pe, sparse, dense = _decoder_inputs(model, False)
    emb, pe, sparse, dense = (t.to(torch.bfloat16) for t in (emb, pe, sparse, dense))
    image = dec.prepare_image(emb, pe, dense[:1])
    with torch.no_grad():
        _, iou, _ = dec.decode(image, sparse, True)
        top = float(iou.float().max())
        # just below the top IoU, but rounding to it in bf16 (its spacing there is >= 2**-9)
        thresh = top - 2.0**-12
        assert torch.tensor(thresh).bfloat16().item() == top
        _, _, rows = dec.decode(image, sparse, True, min_iou=thresh)
    assert torch.equal(rows, torch.nonzero((iou.float() > thresh).any(1))[:, 0])
    assert len(rows) >= 1


def test_low_res_above_is_the_filtered_subset():
    _, model = make_amg_pair(TINY, 0, 10.0)
    p = segany.SamPredictor(model)
    p.set_image(random_image(90, 120, seed=8))
    coords = torch.rand(12, 1, 2, generator=torch.Generator().manual_seed(0)) * 120
    labels = torch.ones(12, 1, dtype=torch.int)
    low, iou = p.predict_low_res(coords, labels)
    thresh = float(iou.max(1).values.median())
    sel_low, sel_iou, rows = p.predict_low_res_above(coords, labels, thresh)
    expected = torch.nonzero((iou > thresh).any(1))[:, 0]
    assert 0 < len(rows) < 12 and torch.equal(rows, expected)
    torch.testing.assert_close(sel_iou, iou)
    torch.testing.assert_close(sel_low, low[expected], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_gelu_matches_plain_ops(dtype):
    from segany.modeling.fast_decoder import linear_gelu

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=g).to(dtype)
    w = (0.2 * torch.randn(128, 64, generator=g)).to(dtype)
    b = (0.1 * torch.randn(128, generator=g)).to(dtype)
    ref = F.gelu(F.linear(x.double(), w.double(), b.double()))
    with torch.no_grad():
        out = linear_gelu(x, w, b)
    assert out.dtype == dtype and out.shape == (300, 128)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    # with autograd on, the plain (differentiable) ops are used
    xg = x.float().requires_grad_()
    linear_gelu(xg, w.float(), b.float()).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
