"""ViT image encoder (ViTDet backbone as used by SAM).

Input: ``(B, 3, S, S)`` float tensor, already normalized and padded to the square side
``S = img_size``. Output: ``(B, C_out, S/patch, S/patch)`` image embedding (256x64x64 for the
official models at 1024 px).

Attention has three implementations computing the same function:

* ``"eager"`` — the reference: an explicit ``(N, N)`` attention matrix plus the decomposed
  relative-position bias, softmax, then ``@ v``.
* ``"blocked"`` — the reference computed in blocks of :data:`BLOCKED_QUERY_BLOCK` queries for
  longer sequences (global attention; windows are shorter), so the largest score tensor is
  ``(heads, block, N)``; plain ops only, which is what the ONNX export traces.
* ``"fast"`` (default) — :func:`biased_attention`: for window attention, fused
  :func:`torch.nn.functional.scaled_dot_product_attention` with the relative-position bias as a
  float mask (fp32) or one ``baddbmm`` (bf16/fp16); for global attention over 64x64 tokens, per-head
  attention in blocks of queries, so no ``(heads, N, N)`` tensor is ever materialized (the
  reference holds ~0.8 GB there for vit_b) and the GEMMs run on the fast bf16 kernels.

The choice is a plain attribute (``Attention.backend``, checked on assignment; set every block's
with :meth:`ImageEncoderViT.set_attention_backend`), not a parameter, so the state dict is
unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .common import LayerNorm2d, MLPBlock

ATTENTION_BACKENDS = ("fast", "eager", "blocked")
#: Queries per block of the ``"blocked"`` backend (vit_b's global attention: 4 blocks of 1024
#: of its 4096 tokens, a ``(12, 1024, 4096)`` score tensor instead of ``(12, 4096, 4096)``).
BLOCKED_QUERY_BLOCK = 1024


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, C, H, W) -> (B, H/p, W/p, D)`` (channels last)."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) offset along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: ``(L, C)`` learned table; linearly resampled when ``L != 2*max(q,k)-1``.

    Returns:
        ``(q_size, k_size, C)`` tensor.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        table = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        table = table.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        table = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[offsets.long()]


def rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative-position bias terms (MViTv2).

    Args:
        q: ``(B, q_h*q_w, C)`` unscaled queries.
    Returns:
        ``rel_h (B, q_h*q_w, k_h)`` and ``rel_w (B, q_h*q_w, k_w)``; the bias of query i on key
        (r, c) is ``rel_h[i, r] + rel_w[i, c]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h).reshape(b, q_h * q_w, k_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w).reshape(b, q_h * q_w, k_w)
    return rel_h, rel_w


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` grid with optional decomposed
    relative-position bias. ``input_size`` is the grid the rel-pos tables are sized for."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.backend = "fast"  # checked by the property below; not part of the state dict
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    @property
    def backend(self) -> str:
        """The implementation: one of :data:`ATTENTION_BACKENDS` (see the module docstring)."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}"
            )
        self._backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        if self.backend == "eager":
            out = self._eager(q, k, v, (h, w))
        elif self.backend == "blocked":
            out = self._blocked(q, k, v, (h, w))
        else:
            out = self._fast(q, k, v, (h, w))
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)

    def _eager(self, q, k, v, size: tuple[int, int]) -> torch.Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rel_h, rel_w = rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, size, size)
            bh, n, _ = attn.shape
            attn = (
                attn.view(bh, n, size[0], size[1]) + rel_h[:, :, :, None] + rel_w[:, :, None, :]
            ).view(bh, n, n)
        return attn.softmax(dim=-1) @ v

    def _blocked(self, q, k, v, size: tuple[int, int]) -> torch.Tensor:
        """:meth:`_eager` with the queries in blocks of :data:`BLOCKED_QUERY_BLOCK`, so no
        ``(B*heads, N, N)`` score tensor is ever held (805 MB for vit_b's global attention)."""
        h, w = size
        n = h * w
        if n <= BLOCKED_QUERY_BLOCK:
            return self._eager(q, k, v, size)
        k_t = k.transpose(-2, -1)
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h, rel_w = rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, size, size)
        outs = []
        for start in range(0, n, BLOCKED_QUERY_BLOCK):
            rows = slice(start, min(start + BLOCKED_QUERY_BLOCK, n))
            scores = (q[:, rows] * self.scale) @ k_t
            if rel_h is not None and rel_w is not None:
                m = scores.shape[1]
                scores = (
                    scores.view(-1, m, h, w) + rel_h[:, rows, :, None] + rel_w[:, rows, None, :]
                ).view(-1, m, n)
            outs.append(scores.softmax(dim=-1) @ v)
        return torch.cat(outs, dim=1)

    def _fast(self, q, k, v, size: tuple[int, int]) -> torch.Tensor:
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        rel_h, rel_w = rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, size, size)
        return biased_attention(q, k, v, rel_h, rel_w, self.scale)


LONG_SEQUENCE = 1024  # tokens; above this, attention is computed per head in query blocks
QUERY_BLOCK = 512


def biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``softmax(scale * q @ k^T + bias) @ v`` with the decomposed bias
    ``bias[b, i, r*k_w + c] = rel_h[b, i, r] + rel_w[b, i, c]``, never holding a full
    ``(B, N, N)`` tensor for long sequences.

    Args:
        q, k, v: ``(B, N, D)``; rel_h ``(B, N, k_h)``; rel_w ``(B, N, k_w)``, ``N = k_h * k_w``.

    Long sequences (global attention) run per head in blocks of queries with ``addmm``/``mm``, so
    the working set is ``QUERY_BLOCK x N`` and the fast (bf16-capable) GEMM kernels are used.
    Short sequences (windows) use one batched call: fused SDPA with the bias as a float mask in
    fp32, or ``baddbmm`` + softmax + ``bmm`` in reduced precision where SDPA's CPU kernel is slower.
    """
    b, n, _ = q.shape
    if n <= LONG_SEQUENCE:
        bias = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).view(b, n, n)
        if q.dtype == torch.float32 or q.device.type != "cpu":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        scores = torch.baddbmm(bias, q * scale, k.transpose(1, 2))
        return torch.bmm(scores.softmax(dim=-1), v)
    out = torch.empty_like(q)
    for i in range(b):
        k_t = k[i].t()
        for j in range(0, n, QUERY_BLOCK):
            rows = slice(j, j + QUERY_BLOCK)
            bias = (rel_h[i, rows, :, None] + rel_w[i, rows, None, :]).reshape(-1, n)
            scores = torch.addmm(bias, q[i, rows] * scale, k_t)
            torch.mm(scores.softmax(dim=-1), v[i], out=out[i, rows])
    return out


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B*nW, ws, ws, C)`` windows, zero-padding H and W up to a
    multiple of ``window_size``. Returns the windows and the padded ``(Hp, Wp)``."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`; drops the padding. Returns ``(B, H, W, C)``."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size
        self.drop_path = 0.0  # stochastic-depth rate, training only (no parameters)

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: zero a residual branch per sample with prob ``drop_path``."""
        if self.drop_path == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + self._drop_path(x)
        return x + self._drop_path(self.mlp(self.norm2(x)))


class ImageEncoderViT(nn.Module):
    """ViT backbone + neck. ``(B, in_chans, S, S) -> (B, out_chans, S/p, S/p)``."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        qkv_bias: bool,
        use_abs_pos: bool,
        use_rel_pos: bool,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.grad_checkpointing = False  # recompute block activations in backward (training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, S', S')`` normalized, padded images → ``(B, out_chans, S'/p, S'/p)``.

        ``S' = img_size`` is the official use. A smaller multiple of the patch size (training
        at a reduced input size, see ``TrainConfig.small_input_steps``) runs the same weights on
        a coarser grid: the absolute position embedding is resampled (bicubic) to that grid and
        the global blocks' relative-position tables are resampled by :func:`get_rel_pos`, so
        positions keep their meaning as fractions of the image.
        """
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2),
                    size=tuple(x.shape[1:3]),
                    mode="bicubic",
                    align_corners=False,
                    antialias=True,
                ).permute(0, 2, 3, 1)
            x = x + pos
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth for training: block ``i`` drops its branches with probability
        ``rate * i / (depth - 1)`` (linear rule of ViTDet/SAM); 0 disables it."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.drop_path = rate * i / max(n - 1, 1)

    def set_attention_backend(self, backend: str) -> None:
        """Select every block's attention: ``"fast"`` (default), ``"eager"`` (the reference) or
        ``"blocked"`` (the reference in blocks of queries); anything else is a ValueError
        naming the allowed values (:data:`ATTENTION_BACKENDS`)."""
        for blk in self.blocks:
            blk.attn.backend = backend
