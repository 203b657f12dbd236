"""Mask decoder: two-way transformer + hypernetwork MLPs + IoU head.

The decoder has two implementations of the same function, chosen by
:attr:`MaskDecoder.backend`: ``"eager"``, the reference (:meth:`MaskDecoder.predict_masks`,
the official code's operations), and ``"fast"`` (default), the inference path of
:mod:`segany.modeling.fast_decoder`. The fast path has no gradients of its own, so it is taken
only when autograd records nothing for the call (grad mode off, or no input and no parameter
requiring grad); training always runs the reference.

For many prompts on one image, :meth:`MaskDecoder.prepare_image` takes the prompt-independent
inputs once and :meth:`MaskDecoder.decode` decodes prompts against them (the fast path then
reuses the image tokens and their projections across calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .fast_decoder import (
    ImageTokens,
    image_projections,
    image_tokens,
    prompt_chunk,
    two_way_transformer_fast,
    upscale_masks_fast,
)

DECODER_BACKENDS = ("fast", "eager")
#: What :meth:`MaskDecoder.decode` returns: masks of the computed prompts, IoUs of all, and the
#: indices of the computed prompts (``None``: all).
Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(eq=False)
class PreparedImage:
    """One image's prompt-independent decoder inputs, from :meth:`MaskDecoder.prepare_image`;
    decode prompts against it with :meth:`MaskDecoder.decode`, any number of times.

    Attributes:
        image_embeddings: ``(1, C, h, w)`` shared by all prompts, or ``(B, C, h, w)``.
        image_pe: ``(1, C, h, w)`` positional encoding of the embedding grid.
        dense_prompt_embeddings: ``(1, C, h, w)`` shared by all prompts (an expanded
            ``(B, C, h, w)`` broadcast counts as shared), or ``(B, C, h, w)`` one per prompt.
        cache_projections: the fast path also projects the image tokens once for all prompts
            and calls (see :func:`~segany.modeling.fast_decoder.image_projections`).
    """

    image_embeddings: torch.Tensor
    image_pe: torch.Tensor
    dense_prompt_embeddings: torch.Tensor
    cache_projections: bool = False
    _tokens: ImageTokens | None = field(default=None, repr=False)  # fast path, on first use


def _prompts_above(iou_pred: torch.Tensor, min_iou: float) -> torch.Tensor:
    """``(S,)`` indices of the prompts (rows of ``iou_pred (B, M)``) with some predicted IoU
    above ``min_iou``, compared in float32 (as the automatic mask generator filters)."""
    return torch.nonzero((iou_pred.float() > min_iou).any(dim=1))[:, 0]


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

    :meth:`forward` is the official interface; :meth:`prepare_image` + :meth:`decode` decode
    many prompts on one image; :attr:`backend` picks the implementation (see the module
    docstring).

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
        self.backend = "fast"

    @property
    def backend(self) -> str:
        """``"fast"`` (default: the inference fast path when autograd records nothing) or
        ``"eager"`` (always the reference); anything else is a ValueError. A plain attribute,
        not part of the state dict."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        if backend not in DECODER_BACKENDS:
            raise ValueError(f"decoder backend must be one of {DECODER_BACKENDS}, got {backend!r}")
        self._backend = backend

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks (the official interface).

        Args:
            image_embeddings: ``(1, C, H, W)`` (shared by all prompts) or ``(B, C, H, W)``
                (one per prompt).
            image_pe: ``(1, C, H, W)``.
            sparse_prompt_embeddings: ``(B, N, C)``.
            dense_prompt_embeddings: ``(B, C, H, W)``.
            multimask_output: return the 3 ambiguity-aware masks instead of the single mask.

        Returns:
            low-res mask logits ``(B, M, 4H, 4W)`` and IoU predictions ``(B, M)``, M = 3 or 1.
            The fast path runs when :attr:`backend` is ``"fast"`` and autograd records nothing
            for the call; otherwise the reference (:meth:`predict_masks`).
        """
        image = self.prepare_image(
            image_embeddings, image_pe, dense_prompt_embeddings, cache_projections=False
        )
        masks, iou_pred, _ = self.decode(image, sparse_prompt_embeddings, multimask_output)
        return masks, iou_pred

    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        *,
        cache_projections: bool = True,
    ) -> PreparedImage:
        """The prompt-independent inputs of one image, to :meth:`decode` prompts against.

        Args:
            image_embeddings: ``(1, C, h, w)``, or ``(B, C, h, w)`` one per prompt.
            image_pe: ``(1, C, h, w)``.
            dense_prompt_embeddings: ``(1, C, h, w)`` (or an expanded broadcast) shared by all
                prompts, or ``(B, C, h, w)`` one per prompt (mask prompts).
            cache_projections: let the fast path project the image tokens once for every
                prompt and call (costs about one prompt's decode, pays off from the second);
                needs image and dense embeddings shared by all prompts.

        Nothing is computed here: the fast path builds its image tokens on the first decode
        that takes it and keeps them in the returned object.
        """
        dense = dense_prompt_embeddings
        if cache_projections and not (
            image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
        ):
            raise ValueError(
                "cache_projections needs image and dense embeddings shared by all prompts "
                f"(batch 1), got {tuple(image_embeddings.shape)} and {tuple(dense.shape)}"
            )
        return PreparedImage(image_embeddings, image_pe, dense, cache_projections)

    def decode(
        self,
        image: PreparedImage,
        sparse_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        *,
        min_iou: float | None = None,
        chunk: int | None = None,
    ) -> Decoded:
        """Decode ``B`` prompts against a :meth:`prepare_image` result.

        Args:
            image: the prepared image.
            sparse_prompt_embeddings: ``(B, N, C)``.
            multimask_output: the 3 ambiguity-aware masks instead of the single mask.
            min_iou: compute masks only for the prompts with at least one predicted IoU above
                this (the automatic mask generator's pre-filter; the fast path then skips the
                upscaler for the others).
            chunk: prompts per inner batch of the fast path (default
                :func:`~segany.modeling.fast_decoder.prompt_chunk`); results do not depend on
                it.

        Returns:
            low-res mask logits ``(S, M, 4h, 4w)`` of the prompts in ``rows``, IoU predictions
            ``(B, M)`` of all prompts, and ``rows``, the ``(S,)`` indices of the prompts whose
            masks were computed (``None`` without ``min_iou``: all, ``S = B``). M = 3 or 1.
            The fast path runs when :attr:`backend` is ``"fast"`` and autograd records nothing
            for the call; otherwise the reference (:meth:`predict_masks`).
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        sparse = sparse_prompt_embeddings
        if self._takes_fast_path(
            image.image_embeddings, image.image_pe, image.dense_prompt_embeddings, sparse
        ):
            return self._decode_fast(self._fast_tokens(image), sparse, sl, min_iou, chunk)
        dense = image.dense_prompt_embeddings
        if dense.shape[0] == 1 and sparse.shape[0] > 1:
            dense = dense.expand(sparse.shape[0], -1, -1, -1)
        masks, iou_pred = self.predict_masks(image.image_embeddings, image.image_pe, sparse, dense)
        masks, iou_pred = masks[:, sl], iou_pred[:, sl]
        rows = None
        if min_iou is not None:
            rows = _prompts_above(iou_pred, min_iou)
            masks = masks[rows]
        return masks, iou_pred, rows

    def _takes_fast_path(self, *inputs: torch.Tensor) -> bool:
        """The fast path is inference-only: :attr:`backend` ``"fast"`` and autograd records
        nothing for a call on ``inputs`` (grad mode off, or no input or parameter requires
        grad)."""
        if self.backend != "fast":
            return False
        if not torch.is_grad_enabled():
            return True
        return not any(t.requires_grad for t in inputs) and not any(
            p.requires_grad for p in self.parameters()
        )

    def predict_masks_fast(
        self, image: PreparedImage | ImageTokens, sparse_prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` (all ``num_mask_tokens`` masks and IoUs) through the fast path
        whatever :attr:`backend` says: inference only, no gradients (the ONNX export traces
        it). ``image`` may also be the fast path's own :class:`ImageTokens` (with projections
        computed elsewhere, as the split ONNX decoder takes them)."""
        tokens = image if isinstance(image, ImageTokens) else self._fast_tokens(image)
        masks, iou_pred, _ = self._decode_fast(
            tokens, sparse_prompt_embeddings, slice(0, None), None, None
        )
        return masks, iou_pred

    def _fast_tokens(self, image: PreparedImage) -> ImageTokens:
        """The fast path's channels-last image tokens of ``image`` (with the projections when
        it caches them), built on first use and kept in ``image``."""
        if image._tokens is None:
            tokens = image_tokens(
                image.image_embeddings, image.image_pe, image.dense_prompt_embeddings
            )
            if image.cache_projections:
                tokens = image_projections(self.transformer, tokens)
            image._tokens = tokens
        return image._tokens

    def _decode_fast(
        self,
        tokens: ImageTokens,
        sparse: torch.Tensor,
        sl: slice,
        min_iou: float | None,
        chunk: int | None,
    ) -> Decoded:
        """:meth:`decode` through the fast path, for the mask tokens in ``sl``."""
        b = sparse.shape[0]
        if chunk is None:
            chunk = prompt_chunk(sparse.device) or b
        if b > chunk:
            per_prompt_src = tokens.src.shape[0] == b and b > 1
            share = tokens.share
            per_prompt_share = share is not None and share.features.shape[0] == b and b > 1
            parts = []
            for start in range(0, b, chunk):
                part = tokens
                if per_prompt_src:
                    part = part._replace(src=tokens.src[start : start + chunk])
                if per_prompt_share:
                    features = share.features[start : start + chunk]
                    part = part._replace(share=share._replace(features=features))
                part_sparse = sparse[start : start + chunk]
                parts.append(self._decode_fast(part, part_sparse, sl, min_iou, chunk))
            masks = torch.cat([m for m, _, _ in parts])
            iou_pred = torch.cat([i for _, i, _ in parts])
            rows = None
            if min_iou is not None:
                rows = torch.cat([r + k * chunk for k, (_, _, r) in enumerate(parts)])
            return masks, iou_pred, rows
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        prompt = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        hs, keys = two_way_transformer_fast(
            self.transformer, tokens.src, tokens.pe, prompt, tokens.proj, tokens.share
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, sl]
        rows = None
        if min_iou is not None:
            rows = _prompts_above(iou_pred, min_iou)
            hs = hs[rows]
            keys = keys[rows] if keys.shape[0] == b else keys
        if keys.shape[0] != hs.shape[0]:
            keys = keys.expand(hs.shape[0], -1, -1)
        idx = range(self.num_mask_tokens)[sl]
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
        """The reference: all ``num_mask_tokens`` masks ``(B, T, 4H, 4W)`` and IoU predictions
        ``(B, T)``. Shapes as for :meth:`forward` (``dense_prompt_embeddings`` one per prompt)."""
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
