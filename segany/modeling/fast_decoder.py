"""Inference fast path of the mask decoder: the same function, far fewer operations.

The decoder's attention layers always pair a few prompt tokens (T ~ 2..10) with many image
tokens (N = 4096). Projecting all N image tokens to queries/keys/values (the reference path)
costs ``N x C x I`` per projection; folding the projections into the T tokens instead costs
``N x C x H*T`` with ``H*T`` (8 heads x T) well below ``I`` (128). The rewrites are exact in real
arithmetic:

* token -> image: ``s (W_k x + b_k) . q_h = (s W_k,h^T q_h) . x + const`` — the constant per
  query is dropped by the softmax; and ``sum_n p_n (W_v x_n + b_v) = W_v (sum_n p_n x_n) + b_v``
  because the probabilities sum to one.
* image -> token: ``s (W_q x + b_q) . k_h = x . (s W_q,h^T k_h) + s b_q,h . k_h`` and the output
  projection is applied to the T values before mixing: ``sum_t p_t (W_o,h v_t)``.

When many prompts share one image (the predictor and the automatic mask generator cache
:class:`ImageProjections` per image), more of the work is done once per image instead of once
per prompt: the first layer's image tokens do not depend on the prompt, so their key, value and
query projections are computed once and each prompt only attends over them (``N x I`` per head
instead of ``N x C x H*T``); in later layers the positional-encoding half of ``keys + pe`` is
projected once per image, so ``keys + pe`` is never materialized per prompt; the residual add
and the output-projection bias of the image -> token attention are folded into one GEMM
(``sum_t p_t = 1`` per head, so adding ``b_o / H`` to every folded value adds ``b_o``).

Cached projections are made with the no-mask embedding. A mask prompt changes the first layer's
image tokens by the mask embedding minus the no-mask one, ``W_c f + s`` (``f`` the mask
features before the mask downscaling's last 1x1 convolution ``W_c``, ``c`` = 16 channels), so
each cached projection ``W`` changes by ``(W W_c) f + W s``: :class:`MaskShare` carries ``f``
and the folded weights, and the change is applied on the prompt tokens' side (``q . (W W_c) f
= (q W W_c) . f``: ``N x c`` per head instead of adding to the ``N x I`` projections).

The two stride-2 transposed convolutions of the upscaler are per-pixel linear maps; they run as
channels-last GEMMs (the second one fused with its GELU in one oneDNN kernel on CPU) and the
pixel shuffle is applied once at the end, after the hypernetwork product, and only for the mask
tokens that are returned.

On the CPU, prompts run :data:`PROMPT_CHUNK_CPU` at a time (:func:`prompt_chunk`), so a
chunk's per-prompt image tokens stay in the last-level cache; results do not depend on it.

:class:`~segany.modeling.MaskDecoder` takes this path when its ``backend`` is ``"fast"`` and
autograd records nothing for the call (it has no gradients of its own); the reference path stays
available (``backend = "eager"``) and tests check they agree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .transformer import Attention, TwoWayTransformer

#: Prompts per inner batch of the fast path on the CPU: a chunk's per-prompt
#: ``(chunk, 4096, 256)`` image tokens then stay in a 32 MB last-level cache. Measured on a
#: 2-core EPYC (vit_b, single points, 60 % upscaled): 4 at a time is fastest, fp32 ~17 ms per
#: prompt (~21 at 8, ~24-28 unchunked at 64), bf16 ~9.0 ms (~9.3 at 8, ~10.3 at 2).
PROMPT_CHUNK_CPU = 4


def prompt_chunk(device: torch.device) -> int | None:
    """Default prompts per inner batch of the fast path on ``device``: :data:`PROMPT_CHUNK_CPU`
    on the CPU, ``None`` (all at once) elsewhere."""
    return PROMPT_CHUNK_CPU if device.type == "cpu" else None


def _matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` for ``a (Ba, M, K)``, ``b (Bb, K, N)`` with ``Ba, Bb in {1, B}``.

    When ``b`` is a single matrix (batch of one, or shared by the whole batch) this is one 2-D
    GEMM, which takes the fast BLAS/oneDNN kernels (notably for bf16 with transposed operands)
    where ``bmm`` would copy its inputs. ``bias`` broadcasts against ``(B, M, N)``.
    """
    ba, m, k = a.shape
    bb, _, n = b.shape
    if bb == 1:
        a2 = a.reshape(ba * m, k)
        if bias is not None and bias.shape[:2] == (1, 1):
            return torch.addmm(bias.reshape(1, -1), a2, b[0]).reshape(ba, m, n)
        out = (a2 @ b[0]).reshape(ba, m, n)
    else:
        out = torch.bmm(a.expand(bb, m, k), b)
    return out if bias is None else out + bias


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` (exact erf GELU) as one oneDNN kernel on CPU when
    available and autograd records nothing (the fused op has no autograd); otherwise the plain
    ops. ``x (M, K)``, ``weight (N, K)``, ``bias (N,)``."""
    fused = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
    if (
        fused is not None
        and x.device.type == "cpu"
        and not recording
        and not torch.jit.is_tracing()  # ONNX export traces this path: keep standard ops
        and not torch.onnx.is_in_onnx_export()
    ):
        try:
            return fused(x, weight, bias, "gelu", [], "none")
        except RuntimeError:  # pragma: no cover - build without oneDNN support for this case
            pass
    return F.gelu(F.linear(x, weight, bias))


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, T, I) -> (B, H, T, I/H)``."""
    b, t, i = x.shape
    return x.reshape(b, t, h, i // h).transpose(1, 2)


def _fold_into_tokens(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``x (B, H, T, d)`` per-head token vectors times the head blocks of ``linear``'s weight
    ``(H*d, C)``: ``(B, H*T, C)``, so that ``x_h . (W_h y) = fold . y`` for any image token y."""
    b, h, t, d = x.shape
    return (x @ linear.weight.reshape(h, d, -1)).reshape(b, h * t, -1)


def _mixed_values_to_output(attn: Attention, mixed: torch.Tensor, t: int) -> torch.Tensor:
    """Token -> image output from ``mixed (B, H*T, C)``, the attention-weighted image tokens:
    each head's value projection (plus bias: the weights sum to one), then ``out_proj``."""
    h = attn.num_heads
    b, _, c = mixed.shape
    wv = attn.v_proj.weight.reshape(h, -1, c)  # (H, d, C)
    out = mixed.reshape(b, h, t, c) @ wv.transpose(1, 2)  # (B, H, T, d)
    out = out + attn.v_proj.bias.reshape(1, h, 1, -1)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def _values_through_output(attn: Attention, v_in: torch.Tensor) -> torch.Tensor:
    """Image -> token values ``(B, H*T, C)``: each head's projected values ``v_proj(v_in)``
    already through its block of ``out_proj`` (applied before mixing, not after)."""
    h = attn.num_heads
    b, t, c = v_in.shape
    v = _heads(attn.v_proj(v_in), h)  # (B, H, T, d)
    wo = attn.out_proj.weight.reshape(c, h, -1).permute(1, 2, 0)  # (H, d, C)
    return (v @ wo).reshape(b, h * t, c)


def _query_bias_scores(attn: Attention, k: torch.Tensor) -> torch.Tensor:
    """The query bias's share of the image -> token scores, ``b_q,h . k_h`` for the (scaled)
    per-head keys ``k (B, H, T, d)``: ``(B, H*T, 1)`` (constant over image tokens, but not
    dropped: the softmax runs over the tokens)."""
    b, h, t, d = k.shape
    return (k * attn.q_proj.bias.reshape(1, h, 1, d)).sum(-1).reshape(b, h * t, 1)


def attend_tokens_to_image(
    attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> torch.Tensor:
    """``attn(q_in, k_in, v_in)`` for few queries and many keys.

    Args:
        q_in: ``(B, T, C)`` token queries. k_in, v_in: ``(B or 1, N, C)`` image tokens.
    Returns:
        ``(B, T, C)``.
    """
    q = _heads(attn.q_proj(q_in), attn.num_heads)  # (B, H, T, d)
    q_fold = _fold_into_tokens(attn.k_proj, q) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H*T, C)
    scores = _matmul(q_fold, k_in.transpose(1, 2))  # (B, H*T, N)
    mixed = _matmul(scores.softmax(dim=-1), v_in)  # (B, H*T, C)
    return _mixed_values_to_output(attn, mixed, q_in.shape[1])


def attend_image_to_tokens(
    attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> torch.Tensor:
    """``attn(q_in, k_in, v_in)`` for many queries and few keys.

    Args:
        q_in: ``(B or 1, N, C)`` image tokens. k_in, v_in: ``(B, T, C)`` prompt tokens.
    Returns:
        ``(B, N, C)``.
    """
    h = attn.num_heads
    b, t, c = k_in.shape
    k = _heads(attn.k_proj(k_in), h)  # (B, H, T, d)
    k = k * (1.0 / math.sqrt(k.shape[-1]))
    k_fold, bias = _fold_into_tokens(attn.q_proj, k), _query_bias_scores(attn, k)
    # scores laid out (B, H*T, N): the softmax over T then runs over a middle axis, vectorized
    # along N (a last-axis softmax over ~7 values is very slow on CPU).
    scores = _matmul(k_fold, q_in.transpose(1, 2), bias)
    n = scores.shape[-1]
    probs = scores.reshape(b, h, t, n).softmax(dim=2).reshape(b, h * t, n)
    v_out = _values_through_output(attn, v_in)  # (B, H*T, C)
    return _matmul(probs.transpose(1, 2), v_out, attn.out_proj.bias.reshape(1, 1, c))


class ImageProjections(NamedTuple):
    """Prompt-independent projections of one image's tokens (see the module docstring).

    All are ``(H, N, d)`` (heads, image tokens, head width): ``k0``/``v0`` the first layer's
    token -> image keys of ``src + pe`` and values of ``src``, ``q0`` its image -> token queries
    of ``src + pe`` (with biases); ``k_pe``/``q_pe`` one per later layer and ``k_pe_final`` the
    same projections of ``pe`` alone (no bias).
    """

    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor
    k_pe: tuple[torch.Tensor, ...]
    q_pe: tuple[torch.Tensor, ...]
    k_pe_final: torch.Tensor


class MaskShare(NamedTuple):
    """A mask prompt's change to the first layer's cached :class:`ImageProjections` (see the
    module docstring), for prompts that share the image's projections.

    ``features`` ``(B or 1, N, c)`` are the mask features ``f`` (zeros, or scaled by 0, for a
    prompt without a mask); ``k_weight``, ``v_weight``, ``q_weight`` ``(H, d, c)`` the per-head
    folded weights ``W W_c`` of the token -> image key and value and the image -> token query
    projections; ``v_bias``, ``q_bias`` ``(H, d)`` their ``W s`` shares, already scaled like
    ``features`` (the key's bias share is constant per query: the softmax drops it).
    """

    features: torch.Tensor
    k_weight: torch.Tensor
    v_weight: torch.Tensor
    q_weight: torch.Tensor
    v_bias: torch.Tensor
    q_bias: torch.Tensor


def mask_share(
    tr: TwoWayTransformer,
    conv: torch.nn.Conv2d,
    no_mask: torch.Tensor,
    features: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> MaskShare:
    """The :class:`MaskShare` of mask features for projections cached with the no-mask
    embedding.

    Args:
        tr: the decoder's transformer. conv: the mask downscaling's last 1x1 convolution
            ``(C, c, 1, 1)``. no_mask: the no-mask embedding ``(C,)``.
        features: ``(B or 1, c, h, w)`` the mask downscaling's output before ``conv``.
        scale: ``(B or 1,)`` 1 for a prompt with a mask, 0 without (default: all 1).
    """
    first = tr.layers[0]
    h = first.cross_attn_token_to_image.num_heads
    w_conv = conv.weight.flatten(1)  # (C, c)
    shift = conv.bias - no_mask  # mask embedding - no-mask embedding = W_conv f + shift
    f = features.flatten(2).transpose(1, 2)  # (B, N, c)
    s = None if scale is None else scale.reshape(-1, 1)
    if s is not None:
        f = f * s[:, :, None]

    def fold(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        w = linear.weight
        return (w @ w_conv).reshape(h, -1, w_conv.shape[1]), (w @ shift).reshape(h, -1)

    k_w, _ = fold(first.cross_attn_token_to_image.k_proj)
    v_w, v_b = fold(first.cross_attn_token_to_image.v_proj)
    q_w, q_b = fold(first.cross_attn_image_to_token.q_proj)
    if s is not None:
        if s.shape[0] != 1:
            raise ValueError("a mask share's bias needs one scale for the batch; got several")
        v_b, q_b = v_b * s, q_b * s
    return MaskShare(f, k_w, v_w, q_w, v_b, q_b)


def _share_scores(x: torch.Tensor, weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``x_h . (W_h f_n)`` for per-head rows ``x (H, B*T, d)``, folded weights ``weight
    (H, d, c)`` and ``features (B or 1, N, c)``: ``(H, B*T, N)``."""
    y = x @ weight  # (H, B*T, c)
    b = features.shape[0]
    if b == 1:
        return y @ features[0].t()
    h, bt, c = y.shape
    return (y.reshape(h, b, bt // b, c) @ features.transpose(1, 2)).reshape(h, bt, -1)


def _share_mix(probs: torch.Tensor, weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``sum_n p_n W_h f_n`` for per-head weights ``probs (H, B*T, N)``: ``(H, B*T, d)``."""
    b = features.shape[0]
    if b == 1:
        mixed = probs @ features[0]  # (H, B*T, c)
    else:
        h, bt, n = probs.shape
        mixed = (probs.reshape(h, b, bt // b, n) @ features).reshape(h, bt, -1)
    return mixed @ weight.transpose(1, 2)


class ImageTokens(NamedTuple):
    """Prompt-independent decoder inputs in channels-last layout, computed once per image.

    ``src`` ``(1 or B, N, C)`` is the image embedding plus the dense prompt embedding,
    ``pe`` ``(1, N, C)`` the positional encoding, ``size`` the ``(h, w)`` embedding grid,
    ``proj`` optional cached :class:`ImageProjections` (only for a shared ``src``, or for a
    ``src`` with mask embeddings whose change to them ``share``, a :class:`MaskShare`, carries).
    """

    src: torch.Tensor
    pe: torch.Tensor
    size: tuple[int, int]
    proj: ImageProjections | None = None
    share: MaskShare | None = None


def image_tokens(
    image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
) -> ImageTokens:
    """Build :class:`ImageTokens` from ``(1, C, h, w)`` embeddings, ``(1, C, h, w)`` PE and a
    ``(1 or B, C, h, w)`` dense prompt embedding (an expanded no-mask embedding counts as one)."""
    if dense.shape[0] > 1 and dense.stride(0) == 0:
        dense = dense[:1]
    _, c, h, w = image_embeddings.shape
    src = (image_embeddings + dense).permute(0, 2, 3, 1).reshape(-1, h * w, c)
    pe = image_pe.permute(0, 2, 3, 1).reshape(1, h * w, c)
    return ImageTokens(src.contiguous(), pe.contiguous(), (h, w))


def _projected_heads(linear: torch.nn.Linear, x: torch.Tensor, h: int, bias: bool) -> torch.Tensor:
    """``(1, N, C)`` -> ``linear(x)`` split into heads ``(H, N, d)``."""
    y = F.linear(x[0], linear.weight, linear.bias if bias else None)
    n, i = y.shape
    return y.reshape(n, h, i // h).transpose(0, 1).contiguous()


def first_layer_projections(
    tr: TwoWayTransformer, src: torch.Tensor, pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first layer's prompt-independent projections of shared image tokens ``src`` and
    ``pe`` (both ``(1, N, C)``): ``k0``, ``v0``, ``q0`` of :class:`ImageProjections`, each
    ``(H, N, d)``."""
    first = tr.layers[0]
    h = first.cross_attn_token_to_image.num_heads
    src_pe = src + pe
    return (
        _projected_heads(first.cross_attn_token_to_image.k_proj, src_pe, h, True),
        _projected_heads(first.cross_attn_token_to_image.v_proj, src, h, True),
        _projected_heads(first.cross_attn_image_to_token.q_proj, src_pe, h, True),
    )


def pe_projections(
    tr: TwoWayTransformer, pe: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
    """The projections of the positional encoding ``pe (1, N, C)`` alone (no bias) that the
    later layers use: ``k_pe``, ``q_pe`` and ``k_pe_final`` of :class:`ImageProjections`.
    They depend on the model only, not on the image."""
    later = tr.layers[1:]
    h = tr.layers[0].cross_attn_token_to_image.num_heads
    return (
        tuple(
            _projected_heads(layer.cross_attn_token_to_image.k_proj, pe, h, False)
            for layer in later
        ),
        tuple(
            _projected_heads(layer.cross_attn_image_to_token.q_proj, pe, h, False)
            for layer in later
        ),
        _projected_heads(tr.final_attn_token_to_image.k_proj, pe, h, False),
    )


def image_projections(tr: TwoWayTransformer, tokens: ImageTokens) -> ImageTokens:
    """``tokens`` with :class:`ImageProjections` attached (costs about one prompt's decode;
    pays off from the second prompt on the same image). ``tokens.src`` must be shared
    (batch 1)."""
    if tokens.src.shape[0] != 1:
        raise ValueError("image projections need image tokens shared by all prompts (batch 1)")
    k0, v0, q0 = first_layer_projections(tr, tokens.src, tokens.pe)
    k_pe, q_pe, k_pe_final = pe_projections(tr, tokens.pe)
    proj = ImageProjections(k0=k0, v0=v0, q0=q0, k_pe=k_pe, q_pe=q_pe, k_pe_final=k_pe_final)
    return tokens._replace(proj=proj)


def _rows_by_head(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, T, I) -> (H, B*T, d)``."""
    b, t, i = x.shape
    return x.reshape(b * t, h, i // h).transpose(0, 1)


def _scores_against_shared(x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Per-head dot products of prompt rows ``x (B, T, H*d)`` with image rows projected once
    per image, ``shared (H, N, d)``: ``(B, H*T, N)``, laid out like the folded paths' scores."""
    h, n, _ = shared.shape
    b, t, _ = x.shape
    y = torch.bmm(_rows_by_head(x, h), shared.transpose(1, 2))  # (H, B*T, N)
    return y.reshape(h, b, t, n).transpose(0, 1).reshape(b, h * t, n)


def attend_tokens_to_projected_image(
    attn: Attention,
    q_in: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    share: MaskShare | None = None,
) -> torch.Tensor:
    """``attn(q_in, image + pe, image)`` given the image's projected keys and values.

    Args:
        q_in: ``(B, T, C)``. k, v: ``(H, N, d)`` shared by all prompts.
        share: the mask prompts' change to ``k`` and ``v``, or ``None``.
    Returns:
        ``(B, T, C)``.
    """
    h = attn.num_heads
    b, t, _ = q_in.shape
    d = k.shape[-1]
    q = _rows_by_head(attn.q_proj(q_in) * (1.0 / math.sqrt(d)), h)  # (H, B*T, d)
    scores = torch.bmm(q, k.transpose(1, 2))  # (H, B*T, N)
    if share is not None:
        scores = scores + _share_scores(q, share.k_weight, share.features)
    probs = scores.softmax(dim=-1)
    mixed = torch.bmm(probs, v)  # (H, B*T, d)
    if share is not None:
        mixed = mixed + _share_mix(probs, share.v_weight, share.features) + share.v_bias[:, None]
    return attn.out_proj(mixed.transpose(0, 1).reshape(b, t, h * d))


def attend_tokens_to_image_pe(
    attn: Attention, q_in: torch.Tensor, image: torch.Tensor, k_pe: torch.Tensor
) -> torch.Tensor:
    """``attn(q_in, image + pe, image)`` for per-prompt ``image (B, N, C)`` with the PE's key
    projection ``k_pe (H, N, d)`` computed once per image. Returns ``(B, T, C)``."""
    h = attn.num_heads
    q = attn.q_proj(q_in) * (1.0 / math.sqrt(k_pe.shape[-1]))  # (B, T, I)
    q_fold = _fold_into_tokens(attn.k_proj, _heads(q, h))  # (B, H*T, C)
    scores = torch.baddbmm(_scores_against_shared(q, k_pe), q_fold, image.transpose(1, 2))
    mixed = torch.bmm(scores.softmax(dim=-1), image)  # (B, H*T, C)
    return _mixed_values_to_output(attn, mixed, q_in.shape[1])


def image_plus_attention_to_tokens(
    attn: Attention,
    image: torch.Tensor,
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    *,
    q_image: torch.Tensor | None = None,
    q_pe: torch.Tensor | None = None,
    share: MaskShare | None = None,
) -> torch.Tensor:
    """``image + attn(image + pe, k_in, v_in)`` with projections cached per image.

    Args:
        image: ``(1 or B, N, C)`` image tokens (without PE).
        k_in, v_in: ``(B, T, C)`` prompt tokens.
        q_image: ``(H, N, d)`` projected queries of ``image + pe`` (shared ``image``; with
            ``share``, the mask prompts' change to them), or
        q_pe: ``(H, N, d)`` query projection of the PE alone (per-prompt ``image``).
    Returns:
        ``(B, N, C)``.
    """
    h = attn.num_heads
    b, t, _ = k_in.shape
    n = image.shape[1]
    k = attn.k_proj(k_in)  # (B, T, I)
    k = k * (1.0 / math.sqrt(k.shape[-1] // h))
    if q_image is not None:
        scores = _scores_against_shared(k, q_image)  # (B, H*T, N)
        if share is not None:
            kh = _rows_by_head(k, h)  # (H, B*T, d)
            extra = _share_scores(kh, share.q_weight, share.features)  # (H, B*T, N)
            extra = extra + (kh * share.q_bias[:, None]).sum(-1, keepdim=True)
            scores = scores + extra.reshape(h, b, t, n).transpose(0, 1).reshape(b, h * t, n)
    else:
        assert q_pe is not None
        kh = _heads(k, h)  # (B, H, T, d)
        k_fold = _fold_into_tokens(attn.q_proj, kh)  # (B, H*T, C)
        pe_scores = _scores_against_shared(k, q_pe) + _query_bias_scores(attn, kh)
        scores = torch.baddbmm(pe_scores, k_fold, image.transpose(1, 2))
    probs = scores.reshape(b, h, t, n).softmax(dim=2).reshape(b, h * t, n)
    v_out = _values_through_output(attn, v_in) + attn.out_proj.bias / h
    return torch.baddbmm(image, probs.transpose(1, 2), v_out)


def two_way_transformer_fast(
    tr: TwoWayTransformer,
    image_tokens: torch.Tensor,
    pe_tokens: torch.Tensor,
    point_embedding: torch.Tensor,
    proj: ImageProjections | None = None,
    share: MaskShare | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as ``TwoWayTransformer.forward`` with channels-last image tokens.

    Args:
        image_tokens: ``(B or 1, N, C)``; pe_tokens ``(1, N, C)``; point_embedding ``(B, T, C)``.
        proj: :class:`ImageProjections` of ``image_tokens`` (batch 1), or ``None``; with
        share: the mask prompts' change to ``proj``'s first-layer projections (then
            ``image_tokens`` are the tokens with the mask embedding, one per prompt or shared).
    Returns:
        tokens ``(B, T, C)``, image tokens ``(B, N, C)``.
    """
    if share is not None and proj is None:
        raise ValueError("a mask share changes cached projections: pass proj too")
    queries, keys, query_pe = point_embedding, image_tokens, point_embedding
    for i, layer in enumerate(tr.layers):
        queries = layer.attend_tokens(queries, query_pe)
        q = queries + query_pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if proj is None:
            k = keys + pe_tokens
            queries = layer.norm2(queries + attend_tokens_to_image(t2i, q, k, keys))
        elif i == 0:
            queries = layer.norm2(
                queries + attend_tokens_to_projected_image(t2i, q, proj.k0, proj.v0, share)
            )
        else:
            queries = layer.norm2(
                queries + attend_tokens_to_image_pe(t2i, q, keys, proj.k_pe[i - 1])
            )
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        if proj is None:
            keys = keys + attend_image_to_tokens(i2t, k, q, queries)
        elif i == 0:
            keys = image_plus_attention_to_tokens(
                i2t, keys, q, queries, q_image=proj.q0, share=share
            )
        else:
            keys = image_plus_attention_to_tokens(i2t, keys, q, queries, q_pe=proj.q_pe[i - 1])
        keys = layer.norm4(keys)
    q = queries + point_embedding
    final = tr.final_attn_token_to_image
    if proj is None:
        attn_out = attend_tokens_to_image(final, q, keys + pe_tokens, keys)
    else:
        attn_out = attend_tokens_to_image_pe(final, q, keys, proj.k_pe_final)
    queries = tr.norm_final_attn(queries + attn_out)
    return queries, keys


def upscale_masks_fast(
    upscaling: torch.nn.Sequential,
    image_tokens: torch.Tensor,
    hyper_in: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """``(hyper_in @ upscaling(image)).view(B, M, 4h, 4w)`` with channels-last GEMMs.

    Args:
        upscaling: the decoder's ``output_upscaling`` (ConvT 2x2/2, LayerNorm2d, GELU,
            ConvT 2x2/2, GELU).
        image_tokens: ``(B, h*w, C)``; hyper_in ``(B, M, C/8)``; size ``(h, w)``.
    Returns:
        ``(B, M, 4h, 4w)`` mask logits.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b, n, c = image_tokens.shape
    h, w = size
    c1, c2 = conv1.weight.shape[1], conv2.weight.shape[1]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # (C, (a, b, c1))
    y = torch.addmm(conv1.bias.repeat(4), image_tokens.reshape(b * n, c), w1)
    y = act1(F.layer_norm(y.reshape(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # (c1, (a2, b2, c2))
    if isinstance(act2, torch.nn.GELU) and act2.approximate == "none":
        y = linear_gelu(y, w2.t().contiguous(), conv2.bias.repeat(4))  # (B*N*4, 4*c2)
    else:
        y = act2(torch.addmm(conv2.bias.repeat(4), y, w2))
    m = hyper_in.shape[1]
    y = hyper_in @ y.reshape(b, n * 16, c2).transpose(1, 2)  # (B, M, N*16)
    # index order (i, j, a, b, a2, b2): row = 4i + 2a + a2, col = 4j + 2b + b2
    y = y.reshape(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return y.reshape(b, m, 4 * h, 4 * w)
