"""The SAM module: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import transforms
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Segment Anything model. State-dict names equal the official checkpoints'.

    ``pixel_mean``/``pixel_std`` are non-persistent buffers (``(3, 1, 1)``, 0..255 RGB scale),
    as in the official module, so they do not appear in checkpoints.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the image encoder (fp32, bf16 or fp16; fp32 for an int8 model, see
        :func:`segany.precision.model_precision`)."""
        return self.image_encoder.patch_embed.proj.weight.dtype

    # --- Compatibility with the official ``Sam`` API (delegates to segany.transforms). ---

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` 0..255 RGB -> normalized, padded ``(B, 3, S, S)``."""
        return transforms.normalize_and_pad(
            x, self.pixel_mean, self.pixel_std, self.image_encoder.img_size
        )

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Low-res logits ``(B, M, 256, 256)`` -> ``(B, M, H, W)`` logits in the original frame."""
        return transforms.postprocess_masks(
            masks, input_size, original_size, self.image_encoder.img_size
        )

    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """Official batched interface: each dict holds ``image`` ``(3, h, w)`` already resized to
        the input frame, ``original_size`` ``(H, W)``, and optional ``point_coords`` ``(B, N, 2)``,
        ``point_labels`` ``(B, N)``, ``boxes`` ``(B, 4)``, ``mask_inputs`` ``(B, 1, 256, 256)`` in
        the input frame, and (models with a text path) ``text_embedding`` ``(D,)`` or ``(B, D)``.
        Returns per image ``masks`` (bool, original frame), ``iou_predictions``
        and ``low_res_logits``."""
        images = torch.stack([self.preprocess(x["image"][None])[0] for x in batched_input])
        embeddings = self.image_encoder(images.to(self.dtype))
        outputs = []
        for record, emb in zip(batched_input, embeddings, strict=True):
            points = None
            if record.get("point_coords") is not None:
                points = (record["point_coords"], record["point_labels"])
            text = record.get("text_embedding")
            if text is not None and text.ndim == 1:
                text = text[None]
            sparse, dense = self.prompt_encoder(
                points, record.get("boxes"), record.get("mask_inputs"), text=text
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=emb[None],
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, tuple(record["image"].shape[-2:]), tuple(record["original_size"])
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs
