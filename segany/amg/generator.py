"""``SamAutomaticMaskGenerator``: prompt SAM with a grid of points, keep confident and stable
masks, remove duplicates, optionally repeat on zoomed-in crops.

Same arguments, semantics and output as the official generator; the speed comes from doing
less work for the same answer:

* the decoder runs on point batches through its fast path, with the prompt-independent image
  tokens and their projections computed once per crop (``MaskDecoder.prepare_image``, see
  :mod:`segany.modeling.fast_decoder`);
* the predicted-IoU filter runs before the decoder's upscaler and before any upsampling, so
  only its survivors are upsampled (exactly as the official code upsamples them, a few at a
  time so their full-resolution logits stay in cache) for the stability score and
  binarization;
* boxes come from row/column maxima of the logits, masks are binarized straight into the
  column-major order of COCO RLE and encoded by pycocotools' C encoder, and the per-mask
  Python loops of the official code are gone;
* masks keep the official order everywhere, so NMS keeps exactly the same masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from ..formats.rle import coco_to_uncompressed_rle, decode_coco_rle, encode_coco_rle, rle_area
from ..io.image import to_rgb_uint8
from ..modeling import Sam
from ..runtime.onnx_predictor import OnnxPredictor
from ..utils.amg import (
    MaskData,
    batched_logits_to_box,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .backends import OnnxBackend, TorchBackend, make_backend

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
UPSAMPLE_CHUNK = 4  # survivors upsampled at once (their full-res logits then stay in cache)


def _encode(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool tensor -> COCO RLEs (str counts), one C call for the batch."""
    return encode_coco_rle(masks.numpy()) if masks.shape[0] else []


def _auto_points_per_batch(backend: TorchBackend | OnnxBackend) -> int:
    """Points per decoder batch from free memory (each point costs ~40 MB at 1024 px in fp32
    across the decoder and the upsampling of its survivors), clamped to [16, 256]."""
    per_point = 40 * 2**20 * (backend.img_size / 1024) ** 2
    if backend.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(backend.device)
    else:
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) for line in f}
            free = info.get("MemAvailable", 2**21) * 1024
        except OSError:
            free = 2 * 2**30
    return int(min(256, max(16, free * 0.25 // per_point)))


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image (drop-in for the official generator).

    Args are the official ones (see their docs), plus:
        model: a :class:`~segany.modeling.Sam` (PyTorch, any device/precision) or a
            :class:`segany.runtime.OnnxPredictor` (ONNX Runtime; an export with the encoder
            and the multimask outputs) — see :mod:`segany.amg.backends`.
        points_per_batch: ``None`` picks it from free memory (results do not depend on it).
        max_masks: keep at most this many masks, highest predicted IoU first.
        min_area_fraction, max_area_fraction: drop masks covering less / at least this
            fraction of the image (the paper dropped masks covering >= 95 % for SA-1B).
    """

    def __init__(
        self,
        model: Sam | OnnxPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int | None = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        max_masks: int | None = None,
        min_area_fraction: float = 0.0,
        max_area_fraction: float = 1.0,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if point_grids is not None:
            if len(point_grids) != crop_n_layers + 1:
                raise ValueError(
                    f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), "
                    f"got {len(point_grids)}"
                )
            for g in point_grids:
                if np.ndim(g) != 2 or np.shape(g)[1] != 2:
                    raise ValueError("each point grid must be an (N, 2) array of (x, y) in [0, 1]")
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        else:
            if points_per_side < 1:
                raise ValueError("points_per_side must be >= 1")
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        if points_per_batch is not None and points_per_batch < 1:
            raise ValueError("points_per_batch must be >= 1 (or None for automatic)")
        if crop_n_layers < 0:
            raise ValueError("crop_n_layers must be >= 0")
        if not 0.0 <= min_area_fraction <= max_area_fraction <= 1.0:
            raise ValueError("need 0 <= min_area_fraction <= max_area_fraction <= 1")
        if max_masks is not None and max_masks < 0:
            raise ValueError("max_masks must be >= 0")
        self.backend = make_backend(model)
        self.predictor = self.backend.predictor  # the official attribute
        self.points_per_batch = points_per_batch or _auto_points_per_batch(self.backend)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.max_masks = max_masks
        self.min_area_fraction = min_area_fraction
        self.max_area_fraction = max_area_fraction

    @property
    def precision(self) -> str:
        """The precision of the model in use (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``)."""
        return self.predictor.precision

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, image: Any) -> list[dict[str, Any]]:
        """Generate masks for one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (or anything :func:`segany.io.image.to_rgb_uint8`
                accepts).

        Returns:
            One record per mask, as the official generator: ``segmentation`` (``(H, W)`` bool,
            or an RLE dict per ``output_mode``), ``area`` (int), ``bbox`` (XYWH),
            ``predicted_iou``, ``point_coords`` (``[[x, y]]`` in the image), ``stability_score``,
            ``crop_box`` (XYWH).
        """
        image = to_rgb_uint8(image)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return self._records(data, image.shape[:2])

    def generate_batch(self, images: list[Any]) -> list[list[dict[str, Any]]]:
        """:meth:`generate` for each image (the model and its buffers are reused)."""
        return [self.generate(im) for im in images]

    # ------------------------------------------------------------------ pipeline
    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1 and len(data):
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(
                data["boxes"].float(), scores, torch.zeros(len(data)), self.crop_nms_thresh
            )
            data.filter(keep)
        data.to_numpy()
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, ...],
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        crop_size = cropped.shape[:2]
        self.backend.set_image(cropped)
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        data = MaskData()
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            data.cat(self._process_batch(batch, crop_size, crop_box, orig_size))
        self.backend.reset_image()
        if len(data) == 0:
            return data
        keep = batched_nms(
            data["boxes"].float(), data["iou_preds"], torch.zeros(len(data)), self.box_nms_thresh
        )
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data))
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        crop_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        b = self.backend
        orig_h, orig_w = orig_size
        coords = b.transform.apply_coords(points, crop_size)
        thresh = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        low_res, iou_preds, rows = b.decode_points(coords, thresh)
        n_masks = iou_preds.shape[1]
        iou_preds = iou_preds.flatten().cpu()
        pts = torch.as_tensor(points.repeat(n_masks, axis=0))
        # flat index (point * n_masks + mask) -> row of the computed low-res masks
        position = torch.full((len(points),), -1, dtype=torch.int64)
        position[rows.cpu()] = torch.arange(len(rows))
        low_res = low_res.flatten(0, 1)
        keep = torch.ones(len(iou_preds), dtype=torch.bool)
        if thresh is not None:
            keep = iou_preds > thresh
        idx = torch.nonzero(keep)[:, 0]
        out = MaskData(
            rles=[],
            boxes=torch.zeros(0, 4, dtype=torch.int64),
            iou_preds=torch.zeros(0),
            points=torch.zeros(0, 2, dtype=pts.dtype),
            stability_score=torch.zeros(0),
        )
        for start in range(0, len(idx), UPSAMPLE_CHUNK):
            sel = idx[start : start + UPSAMPLE_CHUNK]
            src = position[sel // n_masks] * n_masks + sel % n_masks
            logits = b.upscale(low_res[src.to(low_res.device)], crop_size)
            stability = calculate_stability_score(
                logits, b.mask_threshold, self.stability_score_offset
            )
            keep = torch.ones(len(sel), dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                keep = stability >= self.stability_score_thresh
            # the edge test is per mask, so it can run on the whole chunk (boxes are cheap)
            boxes = batched_logits_to_box(logits, b.mask_threshold)
            keep &= ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            kept = torch.nonzero(keep)[:, 0]
            if len(kept) == 0:
                continue
            # binarized straight into column-major (W, H) order, the order COCO RLE runs in,
            # so the encoder reads the masks without another transposing copy
            # (thresholding first, so the transposing copy moves bytes, not floats)
            binary = logits > b.mask_threshold
            if len(kept) < len(sel):
                binary = binary[kept]
            masks_wh = binary.transpose(1, 2).contiguous()
            x0, y0, x1, y1 = crop_box  # (W, H) masks: pad with the axes swapped
            masks_wh = uncrop_masks(masks_wh, [y0, x0, y1, x1], orig_w, orig_h)
            sel = sel[kept]
            out.cat(
                MaskData(
                    rles=_encode(masks_wh.transpose(1, 2)),
                    boxes=boxes[kept],
                    iou_preds=iou_preds[sel],
                    points=pts[sel],
                    stability_score=stability[kept],
                )
            )
        return out

    # ------------------------------------------------------------------ postprocessing
    @staticmethod
    def postprocess_small_regions(data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and remove small islands, then re-run box NMS preferring masks
        that did not change (official semantics)."""
        if len(data) == 0:
            return data
        masks, scores = [], []
        for mask in decode_coco_rle(data["rles"]):
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            masks.append(torch.as_tensor(mask))
            scores.append(float(not (changed_holes or changed_islands)))
        masks_t = torch.stack(masks)
        boxes = batched_mask_to_box(masks_t)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh
        )
        changed = [int(i) for i in keep if scores[i] == 0.0]
        if changed:
            new_rles = _encode(masks_t[changed])
            for i, rle in zip(changed, new_rles, strict=True):
                data["rles"][i] = rle
                data["boxes"][i] = boxes[i].numpy()
        data.filter(keep)
        return data

    def _records(self, data: MaskData, image_size: tuple[int, ...]) -> list[dict[str, Any]]:
        n = len(data)
        if n == 0:
            return []
        rles = data["rles"]
        areas = [rle_area(r) for r in rles]
        total = float(image_size[0] * image_size[1])
        order = [
            i
            for i in range(n)
            if self.min_area_fraction * total <= areas[i]
            and (self.max_area_fraction >= 1.0 or areas[i] < self.max_area_fraction * total)
        ]
        if self.max_masks is not None and len(order) > self.max_masks:
            best = sorted(order, key=lambda i: -float(data["iou_preds"][i]))[: self.max_masks]
            chosen = set(best)
            order = [i for i in order if i in chosen]
        if self.output_mode == "binary_mask":
            segs = list(decode_coco_rle([rles[i] for i in order])) if order else []
        elif self.output_mode == "coco_rle":
            segs = [{"size": list(rles[i]["size"]), "counts": rles[i]["counts"]} for i in order]
        else:
            segs = [coco_to_uncompressed_rle(rles[i]) for i in order]
        records = []
        for seg, i in zip(segs, order, strict=True):
            records.append(
                {
                    "segmentation": seg,
                    "area": areas[i],
                    "bbox": [int(v) for v in box_xyxy_to_xywh(data["boxes"][i])],
                    "predicted_iou": float(data["iou_preds"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability_score"][i]),
                    "crop_box": [int(v) for v in box_xyxy_to_xywh(data["crop_boxes"][i])],
                }
            )
        return records
