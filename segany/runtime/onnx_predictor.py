"""SAM prediction on ONNX Runtime with numpy only (no torch).

:class:`OnnxPredictor` has :class:`segany.SamPredictor`'s interface (``set_image``, ``predict``
with the same arguments, outputs and prompt validation, ``get_image_embedding``,
``save_embedding``/``load_embedding`` in the same file format, ``reset_image``,
``original_size``/``input_size``) on a folder written by :func:`segany.export.export_onnx`
(``segany export-onnx``). It needs ``onnxruntime``, numpy, Pillow and safetensors; this module
must never import torch, directly or through other segany modules.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.image import to_rgb_uint8
from ..prompts import PromptSet, parse_prompts
from ..transforms import ResizeLongestSide, get_preprocess_shape

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segany-onnx"
EMBEDDING_FORMAT_VERSION = "1"  # same layout as segany.io.embedding

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


# ---------------------------------------------------------------------------- embedding files


def read_embedding_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, str]]:
    """``features`` (float32) and metadata of a segany embedding file (safetensors; fp32, fp16
    and bf16 tensors are read), without torch."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", head)
            if n > 1 << 24:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
            meta = header.pop("__metadata__", None) or {}
            info = header["features"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            f.seek(8 + n + start)
            raw = f.read(end - start)
    except FileNotFoundError:
        raise FileNotFoundError(f"embedding file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a segany embedding file: {e!r}") from None
    shape = tuple(int(s) for s in info["shape"])
    data = np.frombuffer(raw, dtype=dtype)
    if info["dtype"] == "BF16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is not a segany embedding file: truncated tensor data")
    return data.reshape(shape).astype(np.float32), meta


def write_embedding_file(
    path: str | os.PathLike,
    features: np.ndarray,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    img_size: int,
    fingerprint: str,
) -> None:
    """Write the layout of :func:`segany.io.embedding.save_embedding_file` (atomically)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"features": np.ascontiguousarray(features)},
        str(tmp),
        metadata={
            "format_version": EMBEDDING_FORMAT_VERSION,
            "original_size": f"{original_size[0]},{original_size[1]}",
            "input_size": f"{input_size[0]},{input_size[1]}",
            "img_size": str(img_size),
            "model_fingerprint": fingerprint,
        },
    )
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- predictor


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of an export folder; FileNotFoundError/ValueError if it is not
    one."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} is not an ONNX export folder (no {MANIFEST_NAME}); create one with "
            f"'segany export-onnx --model M --out DIR'"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a segany ONNX manifest")
    return manifest


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
        self.decoder = self._session("decoder")
        self._encoder: Any = None
        self.reset_image()

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

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

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
        self._require_image()
        assert self.features is not None
        return self.features

    def save_embedding(self, path: str | os.PathLike) -> None:
        """Save the embedding in segany's embedding-file format (readable by
        ``SamPredictor.load_embedding`` for the same model)."""
        self._require_image()
        assert self.features is not None
        write_embedding_file(
            path,
            self.features,
            self.original_size,
            self.input_size,
            self.img_size,
            self.model_fingerprint,
        )

    def load_embedding(self, path: str | os.PathLike, check_model: bool = True) -> None:
        """Load an embedding file (from this predictor or ``SamPredictor.save_embedding``) in
        place of :meth:`set_image`. ValueError if it was made by another model (unless
        ``check_model=False``) or does not fit this model."""
        features, meta = read_embedding_file(path)
        try:
            original_size = tuple(int(v) for v in meta["original_size"].split(","))
            input_size = tuple(int(v) for v in meta["input_size"].split(","))
            img_size = int(meta["img_size"])
            fingerprint = meta["model_fingerprint"]
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path} is not a segany embedding file (bad metadata: {e})") from None
        if img_size != self.img_size or features.shape != self.embedding_shape:
            raise ValueError(
                f"{path}: embedding {features.shape} at img_size {img_size} does not fit this "
                f"model (expects {self.embedding_shape} at {self.img_size})"
            )
        if check_model and fingerprint != self.model_fingerprint:
            raise ValueError(
                f"{path} was computed with a different model (fingerprint {fingerprint} vs "
                f"{self.model_fingerprint}); re-encode the image or pass check_model=False"
            )
        self.set_embedding(features, original_size, input_size)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
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

        Returns:
            ``masks (C, H, W)``, ``scores (C,)``, ``low_res_logits (C, 256, 256)``; with B prompt
            sets each has a leading B axis.
        """
        self._require_image()
        sets, batched = parse_prompts(
            point_coords, point_labels, box, mask_input, self.original_size, self.mask_size
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
        frame; a padding point is added when there is no box, as ``SamPredictor`` does)."""
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
        assert self.features is not None
        return {
            "image_embeddings": self.features,
            "point_coords": (np.concatenate(coords) if coords else np.zeros((0, 2)))[None].astype(
                np.float32
            ),
            "point_labels": (np.concatenate(labels) if labels else np.zeros(0))[None].astype(
                np.float32
            ),
            "mask_input": mask,
            "has_mask_input": has_mask,
            "orig_im_size": np.array(size, np.float32),
        }

    def _decode(
        self, prompt: PromptSet, multimask_output: bool, return_logits: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        masks, iou, low = self.decoder.run(None, self.decoder_inputs(prompt))
        if masks.shape[1] == self.num_mask_tokens:
            sl = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou, low = masks[:, sl], iou[:, sl], low[:, sl]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks[0], iou[0], low[0]
