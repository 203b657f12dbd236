"""``nn.Module`` wrappers traced by :mod:`segany.export.onnx`.

:class:`DecoderOnnxModel` implements the decoder interface of the official
``segment_anything.utils.onnx.SamOnnxModel`` (the one the official web demo and annotation
tools call), written against segany's modules:

* inputs ``image_embeddings (1, C, He, We)``, ``point_coords (1, N, 2)`` (x, y) in the **input
  frame** (after ``ResizeLongestSide.apply_coords``), ``point_labels (1, N)`` float (-1 padding,
  0 background, 1 foreground, 2/3 box corners), ``mask_input (1, 1, 4He, 4We)``,
  ``has_mask_input (1,)`` (0 or 1) and ``orig_im_size (2,)`` float ``(H, W)``;
* with ``text=True`` (a model with a text path), also ``text_embedding (1, D)`` last;
* outputs ``masks (1, M, H, W)`` logits in the original frame, ``iou_predictions (1, M)`` and
  ``low_res_masks (1, M, 4He, 4We)``. This module computes the last two; the upscaling to
  ``orig_im_size`` is appended as plain ONNX nodes by the exporter. M is every mask token (4
  for the official models: index 0 the single-mask output, 1..3 the multimask outputs), or 1
  with ``return_single_mask`` (chosen as the official model does: the single-mask token for 3
  or more points, padding included, else the best multimask token).

The mask decoder runs either through segany's fast path (``fast=True``:
``MaskDecoder.predict_masks_fast``, the same function with the image-token projections folded
into the prompt tokens, see :mod:`segany.modeling.fast_decoder`) or the reference
``MaskDecoder.predict_masks``, whatever the decoder's ``backend`` says.

:class:`DecoderImageOnnxModel` and :class:`DecoderPromptOnnxModel` are the same decoder split
in two for a client that decodes many prompts per image (the browser tool): the image half runs
once per embedding and gives the image tokens with the no-mask embedding, channels-last
(``image_tokens (1, He*We, C)``), and the first transformer layer's projections of them
(``image_keys``, ``image_values``, ``image_queries``, each ``(H, He*We, d)``: heads, image
tokens, head width); the prompt half takes the official prompt inputs (``point_coords``,
``point_labels``, ``mask_input``, ``has_mask_input``) plus those four and gives
``iou_predictions`` and ``low_res_masks`` (no upscale: a client that wants the masks at the
original size runs ``decoder.onnx``), without projecting the first layer's image tokens again.
A mask prompt's change to the four is applied through the mask downscaling's last 1x1
convolution (:class:`segany.modeling.fast_decoder.MaskShare`). The same function in real
arithmetic; in fp32 the two halves agree with :class:`DecoderOnnxModel` to ~1e-5.

:class:`EncoderOnnxModel` is the image encoder on a normalized, padded ``(1, 3, S, S)`` input
with the attention backend the exporter selects (``"blocked"``: the reference in blocks of
queries); resizing of raw pixels is prepended as plain ONNX nodes by
the exporter (it needs a loop, see :func:`segany.export.resize.preprocess_nodes`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling import Sam
from ..modeling.fast_decoder import (
    ImageProjections,
    ImageTokens,
    first_layer_projections,
    mask_share,
    pe_projections,
)
from ..modeling.fast_decoder import image_tokens as channels_last_tokens


class DecoderOnnxModel(nn.Module):
    """Prompt encoder + mask decoder behind the official ONNX decoder inputs."""

    def __init__(
        self,
        model: Sam,
        *,
        return_single_mask: bool = False,
        fast: bool = True,
        text: bool = False,
    ) -> None:
        super().__init__()
        if text and not model.prompt_encoder.has_text:
            raise ValueError("text=True needs a model with a text path")
        self.text = text
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = int(model.image_encoder.img_size)
        self.return_single_mask = return_single_mask
        self.fast = fast
        with torch.no_grad():
            dense_pe = model.prompt_encoder.get_dense_pe().float()
        self.register_buffer("dense_pe", dense_pe, persistent=False)

    # ------------------------------------------------------------------ prompts
    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder.pe_layer
        emb = pe._pe_encoding((coords + 0.5) / self.img_size)  # (1, N, C)
        labels = labels[..., None]
        emb = emb * (labels != -1).to(emb.dtype)
        emb = emb + self.prompt_encoder.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for i, table in enumerate(self.prompt_encoder.point_embeddings):
            emb = emb + table.weight * (labels == i).to(emb.dtype)
        return emb

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = self.prompt_encoder.mask_downscaling[-1](self._mask_features(mask_input))
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has * dense + (1 - has) * no_mask

    def _mask_features(self, mask_input: torch.Tensor) -> torch.Tensor:
        """The mask downscaling up to its last 1x1 convolution: ``(1, c, He, We)``."""
        return self.prompt_encoder.mask_downscaling[:-1](mask_input)

    # ------------------------------------------------------------------ masks
    def _select(
        self, masks: torch.Tensor, iou: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official single-mask choice without control flow: with 3 or more points
        (padding included) the single-mask token wins by a large margin, else the best of the
        multimask tokens."""
        num_points = torch.ones_like(labels).sum(dim=1, keepdim=True)  # (1, 1), follows N
        reweight = torch.zeros_like(iou)
        reweight[:, 0] = 1000.0
        best = torch.argmax(iou + (num_points - 2.5) * reweight, dim=1)  # (1,)
        masks = torch.index_select(masks, 1, best)
        iou = torch.index_select(iou, 1, best)
        return masks, iou

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits ``(1, M, 4He, 4We)`` and IoU predictions ``(1, M)``; the
        exporter appends the upscaling to ``orig_im_size`` as ONNX nodes
        (:func:`segany.export.graph.mask_postprocess_nodes`). The text flavour (``text=True``)
        also takes ``text_embedding (1, D)``, whose token goes before the point tokens, as in
        :meth:`segany.modeling.PromptEncoder.forward`."""
        sparse = self._embed_points(point_coords, point_labels)
        if self.text:
            if text_embedding is None:
                raise ValueError("the text flavour needs text_embedding (1, D)")
            sparse = torch.cat([self.prompt_encoder.embed_text(text_embedding), sparse], dim=1)
        dense = self._embed_mask(mask_input, has_mask_input)
        decoder = self.mask_decoder
        if self.fast:
            image = decoder.prepare_image(
                image_embeddings, self.dense_pe, dense, cache_projections=False
            )
            low_res, iou = decoder.predict_masks_fast(image, sparse)
        else:
            low_res, iou = decoder.predict_masks(image_embeddings, self.dense_pe, sparse, dense)
        if self.return_single_mask:
            low_res, iou = self._select(low_res, iou, point_labels)
        return low_res, iou


class DecoderImageOnnxModel(nn.Module):
    """The image half of the split decoder: ``image_embeddings (1, C, He, We)`` ->
    ``image_tokens (1, He*We, C)`` (channels-last, with the no-mask embedding) and their
    first-layer projections ``image_keys``, ``image_values``, ``image_queries``
    ``(H, He*We, d)``."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            dense_pe = model.prompt_encoder.get_dense_pe().float()
        self.register_buffer("dense_pe", dense_pe, persistent=False)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = channels_last_tokens(image_embeddings, self.dense_pe, no_mask)
        tr = self.model.mask_decoder.transformer
        return (tokens.src, *first_layer_projections(tr, tokens.src, tokens.pe))


class DecoderPromptOnnxModel(DecoderOnnxModel):
    """The prompt half of the split decoder: the official prompt inputs (``point_coords``,
    ``point_labels``, ``mask_input``, ``has_mask_input``) and the image half's outputs ->
    low-res mask logits and IoU predictions, as :class:`DecoderOnnxModel` computes them."""

    def __init__(self, model: Sam, *, return_single_mask: bool = False) -> None:
        super().__init__(model, return_single_mask=return_single_mask)
        with torch.no_grad():
            pe = self.dense_pe.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
            self.pe_proj = pe_projections(model.mask_decoder.transformer, pe)
        self.register_buffer("pe_tokens", pe, persistent=False)

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        image_tokens: torch.Tensor,
        image_keys: torch.Tensor,
        image_values: torch.Tensor,
        image_queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits ``(1, M, 4He, 4We)`` and IoU predictions ``(1, M)``."""
        sparse = self._embed_points(point_coords, point_labels)
        pe = self.prompt_encoder
        conv, no_mask = pe.mask_downscaling[-1], pe.no_mask_embed.weight[0]
        share = mask_share(
            self.mask_decoder.transformer,
            conv,
            no_mask,
            self._mask_features(mask_input),
            has_mask_input,
        )
        # the tokens with the mask embedding: + W_conv f + (bias - no-mask), f scaled by has
        src = torch.addmm(image_tokens[0], share.features[0], conv.weight.flatten(1).t())
        src = (src + (conv.bias - no_mask) * has_mask_input)[None]
        h, w = self.prompt_encoder.image_embedding_size
        tokens = ImageTokens(
            src=src,
            pe=self.pe_tokens,
            size=(h, w),
            proj=ImageProjections(image_keys, image_values, image_queries, *self.pe_proj),
            share=share,
        )
        low_res, iou = self.mask_decoder.predict_masks_fast(tokens, sparse)
        if self.return_single_mask:
            low_res, iou = self._select(low_res, iou, point_labels)
        return low_res, iou


class EncoderOnnxModel(nn.Module):
    """Image encoder on ``(1, 3, S, S)`` normalized, padded input -> ``(1, C, He, We)``."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


def use_tanh_gelu(module: nn.Module) -> None:
    """Switch every ``nn.GELU`` in ``module`` to the tanh approximation (for runtimes without
    ``Erf``), as the official exporter's ``--gelu-approximate`` does."""
    for m in module.modules():
        if isinstance(m, nn.GELU):
            m.approximate = "tanh"
