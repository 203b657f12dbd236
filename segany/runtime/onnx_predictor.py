"""SAM prediction on ONNX Runtime with numpy only (no torch).

:class:`OnnxPredictor` has :class:`segany.SamPredictor`'s interface (``set_image``, ``predict``
with the same arguments, outputs and prompt validation, ``get_image_embedding``,
``save_embedding``/``load_embedding`` in the same file format, ``reset_image``,
``original_size``/``input_size``) on a folder written by :func:`segany.export.export_onnx`
(``segany export-onnx``). It needs ``onnxruntime``, numpy, Pillow and safetensors; this module
must never import torch, directly or through other segany modules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.embedding import EmbeddingRecord, load_embedding_file, save_embedding_file
from ..io.image import to_rgb_uint8
from ..io.onnx_manifest import DECODER_INPUTS, DECODER_TEXT_INPUT, read_manifest
from ..prompts import PromptSet, parse_prompts
from ..transforms import ResizeLongestSide, get_preprocess_shape


class OnnxPredictor:
    """Promptable segmentation on ONNX Runtime, with :class:`segany.SamPredictor`'s interface.

    Args:
        model_dir: folder written by :func:`segany.export.export_onnx` (holds ``manifest.json``).
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        quantized: use the int8 files (``encoder.int8.onnx``, ``decoder.int8.onnx``).
        session_options: an ``onnxruntime.SessionOptions`` for both sessions.

    The encoder session is opened on the first :meth:`set_image`, so a predictor used only
    with :meth:`load_embedding` never loads the encoder.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        providers: Sequence[Any] | None = None,
        quantized: bool = False,
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(model_dir)
        self.quantized = quantized
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.session_options = session_options
        m = self.manifest
        self.img_size = int(m["img_size"])
        self.mask_threshold = float(m.get("mask_threshold", 0.0))
        self.embedding_shape = tuple(int(v) for v in m["embedding_shape"])
        self.mask_size = tuple(int(v) for v in m["low_res_mask_size"])
        self.num_mask_tokens = int(m["num_mask_tokens"])
        self.return_single_mask = bool(m.get("return_single_mask", False))
        self.model_fingerprint = str(m["model_fingerprint"])
        self.pixel_mean = np.asarray(m["pixel_mean"], np.float32)
        self.pixel_std = np.asarray(m["pixel_std"], np.float32)
        self.transform = ResizeLongestSide(self.img_size)
        text_dim = m.get("text_embed_dim")
        self.text_embed_dim = None if text_dim is None else int(text_dim)
        self.decoder = self._session("decoder")
        self._encoder: Any = None
        self._decoder_text: Any = None
        self.reset_image()

    @property
    def precision(self) -> str:
        """``"int8"`` with the int8 files, else ``"fp32"``."""
        return "int8" if self.quantized else "fp32"

    # ------------------------------------------------------------------ sessions
    def _file(self, part: str) -> Path:
        key = part + ("_int8" if self.quantized else "")
        entry = self.manifest.get("files", {}).get(key)
        if entry is None:
            what = "int8 " if self.quantized else ""
            hint = " (export with --quantize)" if self.quantized else ""
            raise FileNotFoundError(f"{self.model_dir} has no {what}{part} model{hint}")
        path = self.model_dir / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in the manifest is missing")
        return path

    def _session(self, part: str) -> Any:
        return self._ort.InferenceSession(
            str(self._file(part)), sess_options=self.session_options, providers=self.providers
        )

    @property
    def decoder_text(self) -> Any:
        """The text flavour's decoder session (``decoder_text.onnx``, opened on first use)."""
        if self._decoder_text is None:
            if self.quantized:
                raise ValueError("text prompts run in fp32: open the predictor without quantized")
            self._decoder_text = self._session("decoder_text")
        return self._decoder_text

    @property
    def encoder(self) -> Any:
        """The image-encoder session (opened on first use)."""
        if self._encoder is None:
            self._encoder = self._session("encoder")
        return self._encoder

    @property
    def has_encoder(self) -> bool:
        return ("encoder_int8" if self.quantized else "encoder") in self.manifest.get("files", {})

    # ------------------------------------------------------------------ state
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image set."""
        self._require_image()
        return (self.orig_h, self.orig_w)  # type: ignore[return-value]

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image in the input frame."""
        self._require_image()
        return (self.input_h, self.input_w)  # type: ignore[return-value]

    def _require_image(self) -> np.ndarray:
        """The embedding of the image set; RuntimeError if none is."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        assert self.features is not None
        return self.features

    # ------------------------------------------------------------------ encoding
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Encode one image (``(H, W, 3)`` uint8 RGB, or anything
        :func:`segany.io.image.to_rgb_uint8` accepts; ``image_format`` ``"RGB"``/``"BGR"``)."""
        arr = to_rgb_uint8(image, image_format)
        h, w = arr.shape[:2]
        ih, iw = get_preprocess_shape(h, w, self.img_size)
        if ih < 1 or iw < 1:
            raise ValueError(f"image of {w}x{h} pixels is too thin to resize to {self.img_size}")
        if not self.has_encoder:
            raise FileNotFoundError(
                f"{self.model_dir} has no image encoder (exported with --no-encoder); use "
                f"load_embedding() or set_embedding()"
            )
        session = self.encoder
        name = session.get_inputs()[0].name
        if self.manifest.get("encoder_preprocess", True):
            feed = arr
        else:
            resized = self.transform.apply_image(arr).astype(np.float32)
            x = (resized - self.pixel_mean) / self.pixel_std
            feed = np.zeros((1, 3, self.img_size, self.img_size), np.float32)
            feed[0, :, :ih, :iw] = x.transpose(2, 0, 1)
        features = session.run(None, {name: feed})[0]
        self.set_embedding(features, (h, w))

    def set_embedding(
        self, features: np.ndarray, original_size: tuple[int, int], input_size: Any = None
    ) -> None:
        """Use a precomputed embedding ``(1, C, He, We)`` of an ``original_size`` ``(H, W)``
        image (``input_size`` defaults to the resize of ``original_size``)."""
        features = np.asarray(features, dtype=np.float32)
        if features.shape != self.embedding_shape:
            raise ValueError(
                f"embedding must have shape {self.embedding_shape}; got {features.shape}"
            )
        h, w = (int(v) for v in original_size)
        if input_size is None:
            input_size = get_preprocess_shape(h, w, self.img_size)
        self.reset_image()
        self.features = np.ascontiguousarray(features)
        self.orig_h, self.orig_w = h, w
        self.input_h, self.input_w = (int(v) for v in input_size)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """Image embedding ``(1, C, He, We)`` float32 (``(1, 256, 64, 64)`` at 1024 px)."""
        return self._require_image()

    def save_embedding(self, path: str | os.PathLike) -> None:
        """Save the embedding in segany's embedding-file format (readable by
        ``SamPredictor.load_embedding`` for the same model)."""
        sizes = (self.original_size, self.input_size, self.img_size)
        record = EmbeddingRecord(self.get_image_embedding(), *sizes, self.model_fingerprint)
        save_embedding_file(path, record)

    def load_embedding(self, path: str | os.PathLike, check_model: bool = True) -> None:
        """Load an embedding file (from this predictor or ``SamPredictor.save_embedding``) in
        place of :meth:`set_image`. ValueError if it was made by another model (unless
        ``check_model=False``) or does not fit this model."""
        rec = load_embedding_file(
            path,
            img_size=self.img_size,
            embedding_shape=self.embedding_shape,
            fingerprint=self.model_fingerprint if check_model else None,
        )
        self.set_embedding(rec.features, rec.original_size, rec.input_size)

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
        text_embedding: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks, exactly as :meth:`segany.SamPredictor.predict` (same arguments, same
        validation, same outputs).

        Args:
            point_coords: ``(N, 2)`` (x, y) pixels in the original image; or ``(B, N, 2)`` /
                a list of ``(N_i, 2)`` arrays for B prompt sets.
            point_labels: ``(N,)`` (or ``(B, N)`` / list): 1 foreground, 0 background,
                -1 ignore, 2/3 box corners.
            box: ``(4,)`` XYXY box, or ``(B, 4)``.
            mask_input: ``(1, 256, 256)`` low-res logits from a previous call (or
                ``(B, 1, 256, 256)``).
            multimask_output: 3 masks for ambiguous prompts instead of 1. A decoder exported
                with ``return_single_mask`` always gives its one chosen mask.
            return_logits: float logits instead of boolean masks.
            text_embedding: ``(D,)`` (or ``(B, D)``) text/region embedding of a text-trained
                model (e.g. ``SamPredictor.text_encoder.encode_text``); runs the export's
                ``decoder_text.onnx`` (fp32).

        Returns:
            ``masks (C, H, W)``, ``scores (C,)``, ``low_res_logits (C, 256, 256)``; with B prompt
            sets each has a leading B axis.
        """
        self._require_image()
        sets, batched = parse_prompts(
            point_coords,
            point_labels,
            box,
            mask_input,
            self.original_size,
            self.mask_size,
            text_embedding=text_embedding,
            text_dim=self.text_embed_dim,
        )
        outs = [self._decode(s, multimask_output, return_logits) for s in sets]
        masks = np.stack([o[0] for o in outs])
        scores = np.stack([o[1] for o in outs])
        low = np.stack([o[2] for o in outs])
        if not batched:
            return masks[0], scores[0], low[0]
        return masks, scores, low

    def decoder_inputs(self, prompt: PromptSet) -> dict[str, np.ndarray]:
        """The official decoder inputs for one prompt set (coordinates mapped to the input
        frame; a padding point is added when there is no box, as ``SamPredictor`` does), and
        ``text_embedding`` when the set has one (the text flavour's extra input)."""
        size = self.original_size
        coords: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        if prompt.coords is not None:
            coords.append(self.transform.apply_coords(prompt.coords, size))
            labels.append(np.asarray(prompt.labels, np.float64))
        if prompt.box is not None:
            coords.append(self.transform.apply_boxes(prompt.box, size).reshape(2, 2))
            labels.append(np.array([2.0, 3.0]))
        elif prompt.coords is not None:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1.0]))
        lh, lw = self.mask_size
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask, np.float32).reshape(1, 1, lh, lw)
            has_mask = np.ones(1, np.float32)
        else:
            mask = np.zeros((1, 1, lh, lw), np.float32)
            has_mask = np.zeros(1, np.float32)
        coords_all = np.concatenate(coords) if coords else np.zeros((0, 2))
        labels_all = np.concatenate(labels) if labels else np.zeros(0)
        values = (
            self._require_image(),
            coords_all[None].astype(np.float32),
            labels_all[None].astype(np.float32),
            mask,
            has_mask,
            np.array(size, np.float32),
        )
        feed = dict(zip(DECODER_INPUTS, values, strict=True))
        if prompt.text is not None:
            feed[DECODER_TEXT_INPUT] = np.asarray(prompt.text, np.float32).reshape(1, -1)
        return feed

    def _decode(
        self, prompt: PromptSet, multimask_output: bool, return_logits: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        session = self.decoder if prompt.text is None else self.decoder_text
        masks, iou, low = session.run(None, self.decoder_inputs(prompt))
        if masks.shape[1] == self.num_mask_tokens:
            sl = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou, low = masks[:, sl], iou[:, sl], low[:, sl]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks[0], iou[0], low[0]
