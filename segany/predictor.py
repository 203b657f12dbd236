"""Promptable prediction: encode an image once, then prompt it many times.

:class:`SamPredictor` is a drop-in for ``segment_anything.SamPredictor`` (same methods, same
arguments, same outputs) and adds batched images, several prompt sets per call without
hand-padding, embedding files, and validation with clear errors.

Coordinates given to :meth:`SamPredictor.predict` are **(x, y) pixels in the original image**
(x along the width); boxes are **XYXY** in the same frame. :meth:`predict_torch` takes them in
the input frame (after ``predictor.transform.apply_coords``), as the official API does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .io.embedding import (
    EmbeddingRecord,
    load_embedding_file,
    model_fingerprint,
    save_embedding_file,
)
from .io.image import to_rgb_uint8
from .modeling import Sam
from .modeling.mask_decoder import PreparedImage
from .prompts import PromptSet, parse_prompts
from .transforms import ResizeLongestSide

DECODER_CHUNK = 64  # prompts decoded at once; bounds memory for many boxes


class SamPredictor:
    """Predict masks for an image from points, boxes and low-res mask prompts.

    Args:
        sam_model: a :class:`segany.modeling.Sam` (any precision, any device).
        text_encoder: what turns ``text=`` phrases into embeddings for a model with a text
            path: any object with ``encode_text(list[str]) -> (N, D)`` float tensor (a
            :class:`segany.text.TextEncoder`). Default: the one the model was loaded with
            (``sam_model.text_encoder``, set by :func:`segany.load_model` for the bundled
            model), if any.
    """

    def __init__(self, sam_model: Sam, text_encoder: Any = None) -> None:
        self.model = sam_model
        self.text_encoder = (
            text_encoder if text_encoder is not None else getattr(sam_model, "text_encoder", None)
        )
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def precision(self) -> str:
        """The model's precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``."""
        from .precision import model_precision

        return model_precision(self.model)

    def reset_image(self) -> None:
        """Forget the current image(s) and their embeddings."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_sizes: list[tuple[int, int]] = []
        self.input_sizes: list[tuple[int, int]] = []
        self._dense_pe: torch.Tensor | None = None
        self._prepared: dict[int, PreparedImage] = {}  # per image index, without mask prompts
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the (first) image set."""
        self._require_image()
        return self.original_sizes[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the (first) image in the input frame."""
        self._require_image()
        return self.input_sizes[0]

    def _require_image(self, single: bool = False) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if single and len(self.original_sizes) != 1:
            raise RuntimeError(
                f"{len(self.original_sizes)} images are set; use predict_batch() for several images"
            )

    # ------------------------------------------------------------------ encoding
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Encode one image.

        Args:
            image: ``(H, W, 3)`` uint8 array as in the official API, or any array/PIL image
                accepted by :func:`segany.io.image.to_rgb_uint8` (grayscale, RGBA, 16-bit, float).
            image_format: ``"RGB"`` or ``"BGR"`` channel order of an array.
        """
        self.set_image_batch([image], image_format=image_format)

    def set_image_batch(self, images: Sequence[Any], image_format: str = "RGB") -> None:
        """Encode several images in one encoder batch; prompt them with :meth:`predict_batch`."""
        if len(images) == 0:
            raise ValueError("set_image_batch needs at least one image")
        arrays = [to_rgb_uint8(im, image_format) for im in images]
        resized = [
            torch.as_tensor(self.transform.apply_image(a), device=self.device).permute(2, 0, 1)
            for a in arrays
        ]
        self._encode(resized, [a.shape[:2] for a in arrays])

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Encode an image already resized to the input frame (official API).

        Args:
            transformed_image: ``(1, 3, h, w)`` with ``max(h, w) == img_size``, 0..255 RGB.
            original_image_size: ``(H, W)`` of the image before resizing.
        """
        img_size = self.model.image_encoder.img_size
        if (
            not isinstance(transformed_image, torch.Tensor)
            or transformed_image.ndim != 4
            or transformed_image.shape[0] != 1
            or transformed_image.shape[1] != 3
            or max(*transformed_image.shape[2:]) != img_size
        ):
            shape = getattr(transformed_image, "shape", None)
            raise ValueError(
                f"set_torch_image expects a (1, 3, h, w) tensor with max(h, w) == {img_size} "
                f"(use predictor.transform.apply_image_torch); got {tuple(shape or ())}"
            )
        self._encode([transformed_image[0]], [tuple(original_image_size)])

    @torch.no_grad()
    def _encode(self, resized: list[torch.Tensor], original_sizes: list[tuple[int, ...]]) -> None:
        self.reset_image()
        batch = torch.stack([self.model.preprocess(r[None].float())[0] for r in resized])
        self.features = self.model.image_encoder(batch.to(self.model.dtype))
        self._finish_set(
            [tuple(int(v) for v in s) for s in original_sizes],
            [tuple(int(v) for v in r.shape[-2:]) for r in resized],
        )

    def _finish_set(
        self, original_sizes: list[tuple[int, int]], input_sizes: list[tuple[int, int]]
    ) -> None:
        self.original_sizes = original_sizes
        self.input_sizes = input_sizes
        self.orig_h, self.orig_w = original_sizes[0]
        self.input_h, self.input_w = input_sizes[0]
        self._dense_pe = None
        self._prepared = {}
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """Image embedding ``(B, C, He, We)`` (``(1, 256, 64, 64)`` for one image at 1024 px)."""
        self._require_image()
        assert self.features is not None
        return self.features

    def save_embedding(self, path: str | os.PathLike) -> None:
        """Save the current single-image embedding (safetensors) so it can be re-prompted later
        without the encoder."""
        self._require_image(single=True)
        record = EmbeddingRecord(
            features=self.get_image_embedding(),
            original_size=self.original_sizes[0],
            input_size=self.input_sizes[0],
            img_size=self.model.image_encoder.img_size,
            model_fingerprint=model_fingerprint(self.model),
        )
        save_embedding_file(path, record)

    def load_embedding(self, path: str | os.PathLike, check_model: bool = True) -> None:
        """Load an embedding saved by :meth:`save_embedding` in place of :meth:`set_image`.

        Raises ValueError when the file was made by a different model (unless
        ``check_model=False``) or its size does not fit this model.
        """
        pe = self.model.prompt_encoder
        rec = load_embedding_file(
            path,
            img_size=self.model.image_encoder.img_size,
            embedding_shape=(1, pe.embed_dim, *pe.image_embedding_size),
            fingerprint=model_fingerprint(self.model) if check_model else None,
        )
        self.reset_image()
        self.features = torch.from_numpy(rec.features).to(self.device, self.model.dtype)
        self._finish_set([rec.original_size], [rec.input_size])

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        text: str | Sequence[str] | None = None,
        text_embedding: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for the current image.

        Args:
            point_coords: ``(N, 2)`` (x, y) pixels in the original image; or ``(B, N, 2)`` /
                a list of ``(N_i, 2)`` arrays for B prompt sets (no padding needed).
            point_labels: ``(N,)`` (or ``(B, N)`` / list) with 1 = foreground, 0 = background,
                -1 = ignore, 2/3 = box top-left/bottom-right corner.
            box: ``(4,)`` XYXY box; or ``(B, 4)`` for B prompt sets.
            mask_input: ``(1, 256, 256)`` low-res logits from a previous call (or
                ``(B, 1, 256, 256)``).
            multimask_output: return 3 masks for ambiguous prompts instead of 1.
            return_logits: return float logits instead of boolean masks.
            text: a phrase naming the object (``"the red star"``), alone or with the other
                prompts; a list of B phrases for B prompt sets. Needs a model with a text path
                and a text encoder (see the class arguments). Text alone is ambiguous like a
                single point: keep ``multimask_output`` and take the top-scored mask.
            text_embedding: instead of ``text``, the ``(D,)`` (or ``(B, D)``) embedding
                itself, e.g. a region embedding from the text encoder.

        Returns:
            ``masks (C, H, W)`` bool (or float logits), ``scores (C,)`` predicted IoU,
            ``low_res_logits (C, 256, 256)``; with B prompt sets each gets a leading B axis.
            C is 3 with ``multimask_output`` else 1.
        """
        self._require_image(single=True)
        emb = self._text_embedding(text, text_embedding)
        sets, batched = self._parse_prompts(point_coords, point_labels, box, mask_input, 0, emb)
        masks, scores, low = self._predict_sets(0, sets, multimask_output, return_logits)
        if not batched:
            return masks[0], scores[0], low[0]
        return masks, scores, low

    def predict_batch(
        self,
        point_coords: Sequence[Any] | None = None,
        point_labels: Sequence[Any] | None = None,
        boxes: Sequence[Any] | None = None,
        mask_input: Sequence[Any] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        text: Sequence[Any] | None = None,
        text_embeddings: Sequence[Any] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Predict for every image set by :meth:`set_image_batch`.

        Each argument is a list with one entry per image (or None); an entry takes any form
        :meth:`predict` accepts (``text`` a phrase or list of phrases, ``text_embeddings`` an
        embedding or ``(B, D)`` array). Returns one ``(masks, scores, low_res_logits)`` per
        image.
        """
        self._require_image()
        n = len(self.original_sizes)
        args = {
            "point_coords": point_coords,
            "point_labels": point_labels,
            "boxes": boxes,
            "mask_input": mask_input,
            "text": text,
            "text_embeddings": text_embeddings,
        }
        for name, value in args.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} images")
        out = []
        for i in range(n):
            entry = {k: (None if v is None else v[i]) for k, v in args.items()}
            sets, batched = self._parse_prompts(
                entry["point_coords"],
                entry["point_labels"],
                entry["boxes"],
                entry["mask_input"],
                i,
                self._text_embedding(entry["text"], entry["text_embeddings"]),
            )
            m, s, lo = self._predict_sets(i, sets, multimask_output, return_logits)
            out.append((m, s, lo) if batched else (m[0], s[0], lo[0]))
        return out

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int = 0,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the input frame (official API).

        Args:
            point_coords: ``(B, N, 2)`` float, input frame; point_labels ``(B, N)``.
            boxes: ``(B, 4)`` XYXY, input frame. mask_input: ``(B, 1, 256, 256)``.
            image_index: which image of a :meth:`set_image_batch` batch to prompt.
            text_embedding: ``(B, D)`` float text/region embeddings (models with a text path).

        Returns:
            ``masks (B, C, H, W)`` (bool unless ``return_logits``), ``iou_predictions (B, C)``,
            ``low_res_masks (B, C, 256, 256)``; float32.
        """
        low_res, iou = self.predict_low_res(
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output,
            image_index,
            text_embedding=text_embedding,
        )
        masks = self.model.postprocess_masks(
            low_res, self.input_sizes[image_index], self.original_sizes[image_index]
        )
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    @torch.no_grad()
    def predict_low_res(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        image_index: int = 0,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder alone: :meth:`predict_torch` without upscaling to the image.

        Returns ``low_res_masks (B, C, 256, 256)`` logits and ``iou_predictions (B, C)``,
        float32. Prompts are in the input frame, as for :meth:`predict_torch`.
        """
        low_res, iou, _ = self._decode(
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output,
            image_index,
            text_embedding=text_embedding,
        )
        return low_res, iou

    @torch.no_grad()
    def predict_low_res_above(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        min_iou: float,
        multimask_output: bool = True,
        image_index: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`predict_low_res`, but low-res masks are computed only for prompts with at
        least one predicted IoU above ``min_iou`` (the automatic mask generator's pre-filter:
        ``MaskDecoder.decode(..., min_iou=)``).

        Returns ``low_res (S, C, 256, 256)`` for those prompts, ``iou_predictions (B, C)`` for
        all, and the ``(S,)`` indices of the prompts whose masks were computed.
        """
        low_res, iou, rows = self._decode(
            point_coords, point_labels, None, None, multimask_output, image_index, min_iou
        )
        assert rows is not None
        return low_res, iou, rows

    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        image_index: int,
        min_iou: float | None = None,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompts in the input frame -> :meth:`MaskDecoder.decode` on image ``image_index``,
        float32. Without a mask prompt the prepared image is kept for the next calls."""
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        if point_coords is None and boxes is None and mask_input is None and text_embedding is None:
            raise ValueError(
                "give at least one prompt: point_coords, boxes, mask_input or text_embedding"
            )
        model = self.model
        decoder = model.mask_decoder
        points = None if point_coords is None else (point_coords, point_labels)
        if text_embedding is None:
            sparse, dense = model.prompt_encoder(points, boxes, mask_input)
        else:
            sparse, dense = model.prompt_encoder(points, boxes, mask_input, text=text_embedding)
        dtype = decoder.iou_token.weight.dtype
        if self._dense_pe is None or self._dense_pe.dtype != dtype:
            self._dense_pe = model.prompt_encoder.get_dense_pe().to(dtype)
        # without a mask prompt, the dense embedding (no-mask) is the same for every prompt:
        # the image is prepared once and kept, with the projections the fast path reuses
        shared = mask_input is None
        image = self._prepared.get(image_index) if shared else None
        if image is None:
            assert self.features is not None
            features = self.features[image_index : image_index + 1].to(dtype)
            dense = dense[:1] if shared else dense
            image = decoder.prepare_image(
                features, self._dense_pe, dense.to(dtype), cache_projections=shared
            )
            if shared:
                self._prepared[image_index] = image
        low_res, iou, rows = decoder.decode(
            image, sparse.to(dtype), multimask_output, min_iou=min_iou
        )
        return low_res.float(), iou.float(), rows

    # ------------------------------------------------------------------ helpers
    def _parse_prompts(
        self,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_input: Any,
        image_index: int,
        text_embedding: Any = None,
    ) -> tuple[list[PromptSet], bool]:
        """Validate prompts (original frame) and split them into prompt sets."""
        pe = self.model.prompt_encoder
        return parse_prompts(
            point_coords,
            point_labels,
            box,
            mask_input,
            self.original_sizes[image_index],
            pe.mask_input_size,
            text_embedding=text_embedding,
            text_dim=getattr(pe, "text_embed_dim", None),
        )

    def _text_embedding(self, text: Any, text_embedding: Any) -> Any:
        """The embedding(s) of ``text`` (a phrase or a list of phrases) from the text encoder,
        or ``text_embedding`` as given; None when neither is."""
        if text is None:
            return text_embedding
        if text_embedding is not None:
            raise ValueError("give text or text_embedding, not both")
        if getattr(self.model.prompt_encoder, "text_embed_dim", None) is None:
            raise ValueError(
                "this model has no text path: text prompts need a model trained with text "
                "(e.g. the bundled segany_tiny, or one trained with text_prompts = true)"
            )
        if self.text_encoder is None:
            raise ValueError(
                "text needs a text encoder: SamPredictor(model, text_encoder=...) (see "
                "segany.text), or pass text_embedding"
            )
        several = not isinstance(text, str)
        phrases = list(text) if several else [text]
        if not phrases or not all(isinstance(t, str) and t.strip() for t in phrases):
            raise ValueError(f"text must be a non-empty phrase or a list of them; got {text!r}")
        with torch.no_grad():
            emb = self.text_encoder.encode_text(phrases)
        emb = emb.detach().float().cpu().numpy()
        return emb if several else emb[0]

    def _predict_sets(
        self, image_index: int, sets: list[PromptSet], multimask_output: bool, return_logits: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run prompt sets, batching those of the same structure (so results equal one-by-one
        calls exactly: no padding tokens are added), and return stacked numpy outputs."""
        size = self.original_sizes[image_index]
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sets):
            key = (
                None if s.coords is None else len(s.coords),
                s.box is not None,
                s.mask is not None,
                s.text is not None,
            )
            groups.setdefault(key, []).append(i)
        results: list[Any] = [None] * len(sets)
        dev = self.device
        for idx in groups.values():
            for start in range(0, len(idx), DECODER_CHUNK):
                chunk = [sets[i] for i in idx[start : start + DECODER_CHUNK]]
                first = chunk[0]
                coords = labels = boxes = masks = text = None
                if first.coords is not None:
                    coords = torch.as_tensor(
                        np.stack([self.transform.apply_coords(s.coords, size) for s in chunk]),
                        dtype=torch.float,
                        device=dev,
                    )
                    labels = torch.as_tensor(
                        np.stack([s.labels for s in chunk]), dtype=torch.int, device=dev
                    )
                if first.box is not None:
                    boxes = torch.as_tensor(
                        np.stack([self.transform.apply_boxes(s.box, size)[0] for s in chunk]),
                        dtype=torch.float,
                        device=dev,
                    )
                if first.mask is not None:
                    masks = torch.as_tensor(
                        np.stack([s.mask for s in chunk]), dtype=torch.float, device=dev
                    )
                if first.text is not None:
                    text = torch.as_tensor(np.stack([s.text for s in chunk]), device=dev)
                m, iou, low = self.predict_torch(
                    coords,
                    labels,
                    boxes,
                    masks,
                    multimask_output,
                    return_logits,
                    image_index,
                    text_embedding=text,
                )
                m, iou, low = m.cpu().numpy(), iou.cpu().numpy(), low.cpu().numpy()
                for j, i in enumerate(idx[start : start + DECODER_CHUNK]):
                    results[i] = (m[j], iou[j], low[j])
        return (
            np.stack([r[0] for r in results]),
            np.stack([r[1] for r in results]),
            np.stack([r[2] for r in results]),
        )
