"""Zero-shot edge detection with SAM (paper section 7.2, appendix D.2).

The pipeline of :func:`edge_map`, for one ``(H, W, 3)`` uint8 RGB image:

1. one encoder pass; a 16x16 grid of foreground points (the automatic generator's
   ``points_per_side=16`` grid, :func:`segany.utils.amg.build_point_grid`), three masks each
   (768), decoded in chunks of points so memory stays bounded;
2. no predicted-IoU or stability filter; redundant masks removed by NMS at 0.7 on the masks'
   boxes, ranked by predicted IoU (torchvision's ``batched_nms``, as the generator does);
   empty masks dropped;
3. for each remaining mask, the Sobel gradient magnitude of its unthresholded probability map
   (sigmoid of the logits upscaled to the image's size), kept only on the mask's outer boundary:
   the pixels within one pixel of the mask's edge (``dilate(M) & ~erode(M)``, 3x3, with
   ``M = logits > 0``), zero elsewhere;
4. the pixel-wise maximum over masks, linearly normalised to [0, 1];
5. edge non-maximum suppression, Canny-style: a pixel is kept when it is not smaller than its
   two neighbours along the gradient direction (of the mask that gave its maximum), quantised
   to 0, 45, 90 or 135 degrees. This is Canny's thinning, not the structured-edges
   ``edgesNms`` (which takes the orientation from the edge map's second derivatives).

:func:`edge_map` returns the thinned map; :func:`edge_maps` both (before and after NMS).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops.boxes import batched_nms

from ..io.image import to_rgb_uint8
from ..modeling import Sam
from ..predictor import SamPredictor
from ..utils.amg import batched_logits_to_box, build_point_grid

__all__ = ["EDGE_SETTINGS", "edge_map", "edge_maps", "edge_png"]

#: The paper's settings (appendix D.2).
EDGE_SETTINGS: dict[str, Any] = {
    "points_per_side": 16,
    "multimask": 3,
    "box_nms_thresh": 0.7,
    "pred_iou_thresh": None,
    "stability_score_thresh": None,
    "boundary": "dilate(M) & ~erode(M), 3x3",
    "edge_nms": "Canny-style, 4 directions",
}


def _predictor(predictor_or_model: SamPredictor | Sam) -> SamPredictor:
    if isinstance(predictor_or_model, SamPredictor):
        return predictor_or_model
    if isinstance(predictor_or_model, Sam):
        return SamPredictor(predictor_or_model)
    raise ValueError(
        f"edge_map takes a SamPredictor or a Sam model; got {type(predictor_or_model).__name__}"
    )


def _sobel(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel ``gx, gy`` of ``p (B, 1, H, W)`` float (replicated border)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=p.device)
    k = torch.stack([kx, kx.t()])[:, None].to(p.dtype)
    g = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), k)
    return g[:, 0:1], g[:, 1:2]


def _edge_nms(edges: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Canny-style thinning of ``edges (H, W)`` along the gradient ``(gx, gy)``."""
    h, w = edges.shape
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45).astype(np.int64)) % 4  # 0: x, 1: 45 deg, 2: y, 3: 135 deg
    pad = np.pad(edges, 1)
    keep = np.zeros((h, w), bool)
    # gradient along +x: compare left/right; 45 deg (y down = +gy): (x+1, y+1) and (x-1, y-1)
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    for s, (dy, dx) in offsets.items():
        a = pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        b = pad[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == s) & (edges >= a) & (edges >= b)
    return np.where(keep & (edges > 0), edges, 0.0).astype(np.float32)


@torch.no_grad()
def edge_maps(
    predictor_or_model: SamPredictor | Sam,
    image: Any,
    *,
    points_per_side: int = 16,
    box_nms_thresh: float = 0.7,
    points_per_batch: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """The edge map of ``image`` (``(H, W, 3)`` RGB, any dtype :func:`to_rgb_uint8` takes)
    before and after edge NMS: two ``(H, W)`` float32 arrays in [0, 1]."""
    if points_per_side < 1 or points_per_batch < 1:
        raise ValueError("points_per_side and points_per_batch must be positive")
    if not 0 < box_nms_thresh <= 1:
        raise ValueError(f"box_nms_thresh must be in (0, 1]; got {box_nms_thresh}")
    predictor = _predictor(predictor_or_model)
    img = to_rgb_uint8(image)
    h, w = img.shape[:2]
    predictor.set_image(img)
    thr = predictor.model.mask_threshold
    points = build_point_grid(points_per_side) * np.array([[w, h]], np.float64)
    coords = predictor.transform.apply_coords(points, (h, w))
    device = predictor.device
    n = len(coords)

    # one decoder pass in chunks of points: the 3n low-res logits (3n x 256 x 256 float32 on
    # the CPU, 201 MB for 768 masks), boxes of the upscaled masks and predicted IoUs
    lows, boxes, scores = [], [], []
    for s in range(0, n, points_per_batch):
        pts = torch.as_tensor(coords[s : s + points_per_batch], dtype=torch.float32)
        pts = pts.to(device)[:, None]
        labels = torch.ones(pts.shape[0], 1, dtype=torch.int64, device=device)
        logits, iou, low = predictor.predict_torch(pts, labels, return_logits=True)
        logits = logits.float()
        lows.append(low.float().flatten(0, 1).cpu())
        boxes.append(batched_logits_to_box(logits, thr).flatten(0, 1).cpu())
        nonempty = (logits.flatten(2).amax(-1) > thr).flatten().cpu()
        iou = iou.float().flatten().cpu()
        scores.append(torch.where(nonempty, iou, torch.full_like(iou, -math.inf)))
    low_t, box_t, score_t = torch.cat(lows), torch.cat(boxes), torch.cat(scores)
    ids = torch.nonzero(torch.isfinite(score_t)).flatten()
    keep = ids[batched_nms(box_t[ids].float(), score_t[ids], torch.zeros(len(ids)), box_nms_thresh)]
    # Sobel on the kept masks' probability maps, on their boundaries, pixel-wise max
    best = torch.zeros(h, w, device=device)
    bgx = torch.zeros(h, w, device=device)
    bgy = torch.zeros(h, w, device=device)
    for s in range(0, len(keep), points_per_batch):
        low = low_t[keep[s : s + points_per_batch]].to(device)[:, None]
        flat = predictor.model.postprocess_masks(
            low.to(predictor.model.dtype), predictor.input_size, predictor.original_size
        ).float()
        prob = torch.sigmoid(flat)
        gx, gy = _sobel(prob)
        mag = torch.sqrt(gx * gx + gy * gy)
        m = (flat > thr).float()
        dil = F.max_pool2d(m, 3, 1, 1)
        ero = -F.max_pool2d(-m, 3, 1, 1)
        mag = mag * (dil > 0) * (ero <= 0)
        val, arg = mag[:, 0].max(0)
        upd = val > best
        best = torch.where(upd, val, best)
        bgx = torch.where(upd, gx[:, 0].gather(0, arg[None])[0], bgx)
        bgy = torch.where(upd, gy[:, 0].gather(0, arg[None])[0], bgy)
    raw = best.cpu().numpy().astype(np.float32)
    lo, hi = float(raw.min()), float(raw.max())
    raw = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
    thin = _edge_nms(raw, bgx.cpu().numpy(), bgy.cpu().numpy())
    return raw.astype(np.float32), thin


def edge_map(predictor_or_model: SamPredictor | Sam, image: Any, **kwargs: Any) -> np.ndarray:
    """The thinned edge map of ``image``: ``(H, W)`` float32 in [0, 1] (see the module
    docstring; ``kwargs`` as :func:`edge_maps`)."""
    return edge_maps(predictor_or_model, image, **kwargs)[1]


def edge_png(edges: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 1] -> ``(H, W)`` uint8 (0..255, rounded), as BSDS results."""
    return np.clip(np.rint(np.asarray(edges, np.float64) * 255.0), 0, 255).astype(np.uint8)
