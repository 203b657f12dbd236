"""Where the automatic mask generator gets its masks from: a PyTorch model or ONNX Runtime.

:class:`~segany.amg.SamAutomaticMaskGenerator` needs four things from a model: encode a crop,
decode a batch of single-point prompts into low-res logits and predicted IoUs (skipping the
prompts whose IoUs are all below the filter), upscale chosen low-res logits to the crop, and
the mask threshold. :class:`TorchBackend` does this with :class:`segany.SamPredictor`'s
batched fast path; :class:`OnnxBackend` does it with the exported ``decoder.onnx`` /
``encoder.onnx`` through :class:`segany.runtime.OnnxPredictor` (one decoder call per point:
the official decoder interface takes one prompt set per call). Everything after that —
stability, NMS, crops, RLE — is shared, so both backends give the same mask set up to the
numerical differences of the two runtimes.

Coordinates: points are ``(B, 2)`` (x, y) in the **input frame** (after
``ResizeLongestSide.apply_coords``), as :meth:`segany.SamPredictor.predict_torch` takes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import transforms
from ..modeling import Sam
from ..predictor import SamPredictor
from ..runtime.onnx_predictor import OnnxPredictor


class _Backend:
    """What both backends share: a predictor that holds the current crop's embedding."""

    predictor: Any

    @property
    def transform(self) -> Any:
        """The predictor's ``ResizeLongestSide`` (coordinates to the input frame)."""
        return self.predictor.transform

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the current crop in the input frame."""
        return self.predictor.input_size

    def set_image(self, image: np.ndarray) -> None:
        """Encode an ``(H, W, 3)`` uint8 RGB crop."""
        self.predictor.set_image(image)

    def reset_image(self) -> None:
        self.predictor.reset_image()


class TorchBackend(_Backend):
    """The generator's model calls on a :class:`~segany.modeling.Sam` (any device/precision)."""

    def __init__(self, model: Sam) -> None:
        self.predictor = SamPredictor(model)
        self.mask_threshold = float(model.mask_threshold)
        self.img_size = int(model.image_encoder.img_size)
        self.device = model.device

    def decode_points(
        self, coords: np.ndarray, min_iou: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single foreground points ``(B, 2)`` -> ``low_res (R, 3, h, w)`` float32 logits of the
        ``(R,)`` ``rows`` with some IoU above ``min_iou`` (all rows when ``None``) and
        ``iou (B, 3)`` float32 for all, on the CPU except ``low_res`` (model device)."""
        p = self.predictor
        pts = torch.as_tensor(coords, device=p.device).float()[:, None, :]
        labels = torch.ones(len(coords), 1, dtype=torch.int, device=p.device)
        if min_iou is None:
            low_res, iou = p.predict_low_res(pts, labels)
            rows = torch.arange(len(coords))
        else:
            low_res, iou, rows = p.predict_low_res_above(pts, labels, min_iou)
        return low_res, iou.cpu(), rows.cpu()

    def upscale(self, low_res: torch.Tensor, crop_size: tuple[int, ...]) -> torch.Tensor:
        """``(K, h, w)`` low-res logits -> ``(K, H, W)`` float logits in the crop, on the CPU."""
        model = self.predictor.model
        return model.postprocess_masks(low_res[None], self.input_size, crop_size)[0].cpu()


class OnnxBackend(_Backend):
    """The generator's model calls on an exported ONNX model (:class:`OnnxPredictor`).

    The export must keep the multimask outputs (not ``--return-single-mask``), and must
    include the encoder (or embeddings must be set some other way)."""

    def __init__(self, predictor: OnnxPredictor) -> None:
        if predictor.return_single_mask or predictor.num_mask_tokens < 2:
            raise ValueError(
                "the automatic mask generator needs the three multimask outputs; this ONNX "
                "model was exported with --return-single-mask — export it again without it"
            )
        if not predictor.has_encoder:
            raise ValueError(
                f"the ONNX model in {predictor.model_dir} has no encoder.onnx; the automatic "
                "mask generator encodes every image and crop — export it with the encoder"
            )
        self.predictor = predictor
        self.mask_threshold = float(predictor.mask_threshold)
        self.img_size = int(predictor.img_size)
        self.device = torch.device("cpu")

    def decode_points(
        self, coords: np.ndarray, min_iou: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`TorchBackend.decode_points`; one ``decoder.onnx`` call per point (the
        point plus the padding point ``SamPredictor`` adds, multimask outputs 1..3)."""
        p = self.predictor
        lh, lw = p.mask_size
        feed = {
            "image_embeddings": p.features,
            "mask_input": np.zeros((1, 1, lh, lw), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            # the in-graph upscaling is unused here: aim it at the input frame (no extra resize)
            "orig_im_size": np.array(p.input_size, np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32),
        }
        outputs = ["iou_predictions", "low_res_masks"]
        ious, lows = [], []
        for xy in np.asarray(coords, np.float32):
            feed["point_coords"] = np.array([[xy, (0.0, 0.0)]], np.float32)
            iou, low = p.decoder.run(outputs, feed)
            ious.append(iou[0, 1:])
            lows.append(low[0, 1:])
        iou_t = torch.from_numpy(np.stack(ious)) if ious else torch.zeros(0, 3)
        if min_iou is None:
            rows = torch.arange(len(ious))
        else:
            rows = torch.nonzero((iou_t > min_iou).any(dim=1))[:, 0]
        if len(rows) == 0:
            return torch.zeros(0, 3, lh, lw), iou_t, rows
        return torch.from_numpy(np.stack([lows[i] for i in rows.tolist()])), iou_t, rows

    def upscale(self, low_res: torch.Tensor, crop_size: tuple[int, ...]) -> torch.Tensor:
        return transforms.postprocess_masks(
            low_res[None].float(), self.input_size, crop_size, self.img_size
        )[0]


def make_backend(model: Sam | OnnxPredictor) -> TorchBackend | OnnxBackend:
    """The backend for a :class:`~segany.modeling.Sam` or an :class:`OnnxPredictor`."""
    if isinstance(model, Sam):
        return TorchBackend(model)
    if isinstance(model, OnnxPredictor):
        return OnnxBackend(model)
    raise TypeError(
        "SamAutomaticMaskGenerator needs a segany Sam model (segany.load_model) or a "
        f"segany.runtime.OnnxPredictor, got {type(model).__name__}"
    )
