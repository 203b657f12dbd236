"""Mask decoder: two-way transformer + hypernetwork MLPs + IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .fast_decoder import ImageTokens, image_tokens, two_way_transformer_fast, upscale_masks_fast

DECODER_BACKENDS = ("fast", "eager")
#: Prompts per inner batch of :meth:`MaskDecoder.decode_fast` on the CPU: a chunk's per-prompt
#: ``(chunk, 4096, 256)`` image tokens then stay in a 32 MB last-level cache. Measured on a
#: 2-core EPYC (vit_b, single points, 60 % upscaled): 4 at a time is fastest, fp32 ~17 ms per
#: prompt (~21 at 8, ~24-28 unchunked at 64), bf16 ~9.0 ms (~9.3 at 8, ~10.3 at 2).
PROMPT_CHUNK_CPU = 4


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (optionally sigmoid at the end)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.num_layers = num_layers
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from image and prompt embeddings.

    Args:
        transformer_dim: channel width C (256).
        transformer: the two-way transformer (operates at width C).
        num_multimask_outputs: masks output for ambiguous prompts (3); one more mask token is
            used for the single-mask output.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self.backend = "fast"  # used when autograd is off; see segany.modeling.fast_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embeddings: ``(1, C, H, W)`` (shared by all prompts) or ``(B, C, H, W)``
                (one per prompt).
            image_pe: ``(1, C, H, W)``.
            sparse_prompt_embeddings: ``(B, N, C)``.
            dense_prompt_embeddings: ``(B, C, H, W)``.
            multimask_output: return the 3 ambiguity-aware masks instead of the single mask.

        Returns:
            low-res mask logits ``(B, M, 4H, 4W)`` and IoU predictions ``(B, M)``, M = 3 or 1.
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        if self.backend == "fast" and not torch.is_grad_enabled():
            tokens = image_tokens(image_embeddings, image_pe, dense_prompt_embeddings)
            masks, iou_pred, _ = self.decode_fast(tokens, sparse_prompt_embeddings, sl)
            return masks, iou_pred
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, sl], iou_pred[:, sl]

    def decode_fast(
        self,
        tokens: ImageTokens,
        sparse_prompt_embeddings: torch.Tensor,
        token_slice: slice,
        min_iou: float | None = None,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`predict_masks` for the mask tokens in ``token_slice`` only, through the
        algebraically equivalent fast path (inference). ``tokens`` may be cached per image
        (with :func:`~segany.modeling.fast_decoder.image_projections` attached).

        With ``min_iou``, masks are upscaled only for prompts that have at least one mask
        whose predicted IoU exceeds it (the IoU head runs before the upscaler).

        Prompts run ``chunk`` at a time (default :data:`PROMPT_CHUNK_CPU` on the CPU, where a
        chunk's per-prompt image tokens then stay in cache; all at once elsewhere); results do
        not depend on it.

        Returns low-res masks ``(S, M, 4h, 4w)``, IoU predictions ``(B, M)`` for all prompts,
        and the indices of the ``S`` prompts whose masks were computed (``None`` = all).
        """
        b = sparse_prompt_embeddings.shape[0]
        if chunk is None:
            chunk = PROMPT_CHUNK_CPU if sparse_prompt_embeddings.device.type == "cpu" else b
        if b > chunk:
            per_prompt_src = tokens.src.shape[0] == b and b > 1
            parts = []
            for start in range(0, b, chunk):
                part = tokens
                if per_prompt_src:
                    part = tokens._replace(src=tokens.src[start : start + chunk])
                sparse = sparse_prompt_embeddings[start : start + chunk]
                parts.append(self.decode_fast(part, sparse, token_slice, min_iou, chunk))
            masks = torch.cat([m for m, _, _ in parts])
            iou_pred = torch.cat([i for _, i, _ in parts])
            rows = None
            if min_iou is not None:
                rows = torch.cat([r + k * chunk for k, (_, _, r) in enumerate(parts)])
            return masks, iou_pred, rows
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        prompt = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
        )
        hs, keys = two_way_transformer_fast(
            self.transformer, tokens.src, tokens.pe, prompt, tokens.proj
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, token_slice]
        rows = None
        if min_iou is not None:
            rows = torch.nonzero((iou_pred > min_iou).any(dim=1))[:, 0]
            hs = hs[rows]
            keys = keys[rows] if keys.shape[0] == b else keys
        if keys.shape[0] != hs.shape[0]:
            keys = keys.expand(hs.shape[0], -1, -1)
        idx = range(self.num_mask_tokens)[token_slice]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in idx], dim=1
        )
        masks = upscale_masks_fast(self.output_upscaling, keys, hyper_in, tokens.size)
        return masks, iou_pred, rows

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, T, 4H, 4W)`` and IoU predictions ``(B, T)``."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if image_embeddings.shape[0] != b:
            image_embeddings = image_embeddings.expand(b, -1, -1, -1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        return masks, self.iou_prediction_head(iou_token_out)
