"""Prompt encoder: points, boxes and a dense mask prompt -> sparse and dense embeddings.

Coordinate convention: prompt coordinates are **(x, y) in pixels of the model input frame**
(the resized, unpadded image inside the ``input_image_size`` square), with the pixel's top-left
corner at integer coordinates; the encoder adds 0.5 to move to pixel centres.

Point labels: ``1`` foreground, ``0`` background, ``-1`` padding (not-a-point), ``2``/``3`` top-left
and bottom-right box corners (as in the official ONNX decoder interface).

Text prompts (the paper's §7.5 / App. D.5, optional): with ``text_embed_dim`` set, a CLIP-style
embedding ``(B, D)`` — of a region in training, of a phrase at inference — becomes one more
sparse token, ``text_projection(t / ‖t‖) + text_embed``, placed before the point and box tokens.
Without it the module, its state dict and its outputs are exactly the official ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature positional encoding of normalized (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., 2 * num_pos_feats)``."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an ``(H, W)`` grid of pixel centres -> ``(C, H, W)``."""
        h, w = size
        g = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=g.device, dtype=g.dtype) + 0.5) / h
        x = (torch.arange(w, device=g.device, dtype=g.dtype) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``(B, N, 2)`` (x, y) pixel coordinates in an ``(H, W)`` frame -> ``(B, N, C)``."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding width (256 for the official models).
        image_embedding_size: ``(H, W)`` of the image embedding grid (64x64 at 1024 px).
        input_image_size: ``(H, W)`` of the padded model input (1024x1024).
        mask_in_chans: hidden channels of the mask-downscaling CNN.
        text_embed_dim: width ``D`` of text/region embeddings, or None (no text path: the
            official module). When set, ``text_projection`` (Linear D -> embed_dim) and
            ``text_embed`` (the learned type embedding, ``(1, embed_dim)``) are added.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if text_embed_dim is not None and (
            isinstance(text_embed_dim, bool)
            or not isinstance(text_embed_dim, int)
            or text_embed_dim <= 0
        ):
            raise ValueError(
                f"text_embed_dim must be a positive int or None; got {text_embed_dim!r}"
            )
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # fg point, bg point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_embed_dim = text_embed_dim
        if text_embed_dim is not None:
            self.text_projection = nn.Linear(text_embed_dim, embed_dim)
            self.text_embed = nn.Embedding(1, embed_dim)
            # A unit-norm embedding then gives a token of unit scale per channel, like the
            # N(0, 1) point and type embeddings beside it (nn.Linear's default would start
            # the content ~20x smaller than the constant type embedding it rides on).
            nn.init.normal_(self.text_projection.weight, std=1.0)
            nn.init.zeros_(self.text_projection.bias)

    @property
    def has_text(self) -> bool:
        """Whether this encoder has the text path (accepts ``text=`` in :meth:`forward`)."""
        return self.text_embed_dim is not None

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` text/region embeddings -> ``(B, 1, C)`` sparse tokens: the projection of
        the ℓ2-normalised embedding plus the text type embedding."""
        if not self.has_text:
            raise ValueError(
                "this model has no text path (prompt_encoder.text_embed_dim is None): train or "
                "load a model with text weights to use text prompts"
            )
        if text.ndim != 2 or text.shape[1] != self.text_embed_dim:
            raise ValueError(
                f"text embeddings must be (B, {self.text_embed_dim}); got {tuple(text.shape)}"
            )
        w = self.text_projection.weight
        t = nn.functional.normalize(text.to(w.dtype), dim=-1)
        return (self.text_projection(t) + self.text_embed.weight)[:, None, :]

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, ``(1, C, H, W)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centre
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        emb = emb + (labels == -1)[..., None] * self.not_a_point_embed.weight
        for i, table in enumerate(self.point_embeddings):
            emb = emb + (labels == i)[..., None] * table.weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        top_left = emb[:, 0, :] + self.point_embeddings[2].weight
        bottom_right = emb[:, 1, :] + self.point_embeddings[3].weight
        return torch.stack([top_left, bottom_right], dim=1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords (B, N, 2) float, labels (B, N) int)`` or None.
            boxes: ``(B, 4)`` XYXY or None.
            masks: ``(B, 1, 4*He, 4*We)`` low-res mask logits or None.
            text: ``(B, D)`` float text/region embeddings (normalised here) or None; needs the
                text path (``text_embed_dim``).

        Returns:
            sparse ``(B, N', C)`` (the text token first when given) and dense
            ``(B, C, He, We)`` embeddings.
        """
        if text is not None:
            text_tokens = self.embed_text(text)
            bs = text.shape[0]
            for other, what in (
                (points and points[0], "points"),
                (boxes, "boxes"),
                (masks, "masks"),
            ):
                if other is not None and other.shape[0] != bs:
                    raise ValueError(f"text has {bs} prompt set(s) but {what} has {other.shape[0]}")
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        if text is not None:
            bs = text.shape[0]
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((bs, 0, self.embed_dim))
        if text is not None:
            sparse = text_tokens.to(sparse.dtype)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
