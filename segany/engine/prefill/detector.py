"""The class-agnostic box detector of stage 2 (as in the SAM paper): a torchvision Faster
R-CNN trained on the boxes of the project's accepted masks as one "object" class, whose
confident boxes become SAM box prompts.

Files: ``DIR/detectors/detector_<n>.pt`` (the state dict and the architecture, loaded with
``weights_only``) and ``DIR/detectors/detector_<n>.json`` (arch, steps, loss curve, data size,
time), both written atomically, the JSON last: a detector is recorded when its JSON is there,
and the newest is the highest ``n`` (:func:`newest_detector`). No pretrained weights are used
(``weights=None, weights_backbone=None``): the detector learns from the project alone.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...io.files import write_bytes_atomic, write_json_atomic
from ...io.image import load_image
from .settings import ARCHS

__all__ = [
    "ARCHS",
    "DETECTORS_DIR",
    "BoxSample",
    "Detector",
    "NoDetectorError",
    "build_detector",
    "detect_boxes",
    "detector_dataset",
    "detector_proposals",
    "load_detector",
    "newest_detector",
    "read_detector_info",
    "save_detector",
    "train_detector",
    "train_project_detector",
]

#: The detector folder of a project.
DETECTORS_DIR = "detectors"
_NAME = re.compile(r"^detector_(\d+)\.json$")


class NoDetectorError(ValueError):
    """The project has no trained detector (or the file given is not one)."""


@dataclass(frozen=True)
class BoxSample:
    """One training image: its file and the XYXY pixel boxes ``(N, 4)`` float32 of its
    accepted masks."""

    image_id: int
    path: Path
    boxes: np.ndarray


@dataclass
class Detector:
    """A loaded detector: the model (eval mode), its architecture and its file's name."""

    model: nn.Module
    arch: str
    name: str
    device: torch.device


class _TinyBackbone(nn.Sequential):
    """Four stride-2 conv layers (stride 16, 64 channels)."""

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for c in (16, 32, 64, 64):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        super().__init__(*layers)
        self.out_channels = 64


def build_detector(arch: str = "mobilenet_v3") -> nn.Module:
    """A Faster R-CNN with 2 classes (background, object) and no pretrained weights."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_320_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if arch == "mobilenet_v3":
        return fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=2, box_score_thresh=0.01
        )
    if arch == "tiny":
        anchors = AnchorGenerator(sizes=((16, 32, 64, 128),), aspect_ratios=((0.5, 1.0, 2.0),))
        return FasterRCNN(
            _TinyBackbone(),
            num_classes=2,
            min_size=256,
            max_size=256,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
            rpn_batch_size_per_image=128,
            box_batch_size_per_image=128,
            box_score_thresh=0.01,
        )
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")


def detector_dataset(project: Any, sources: Sequence[str] = ("manual",)) -> list[BoxSample]:
    """The project's images with accepted masks of ``sources`` (default: the annotators'
    masks), with those masks' boxes (XYWH ``bbox`` to XYXY). Proposals waiting for review
    are never used."""
    out = []
    for image in project.list_images():
        if not image.num_masks:
            continue
        pending = {m for m, s in project.proposal_states(image.id).items() if s == "proposal"}
        boxes = [
            [m.bbox[0], m.bbox[1], m.bbox[0] + m.bbox[2], m.bbox[1] + m.bbox[3]]
            for m in project.list_masks(image.id)
            if m.source in sources and m.id not in pending and m.bbox[2] > 0 and m.bbox[3] > 0
        ]
        if boxes:
            path = project.root / image.relpath
            out.append(BoxSample(image.id, path, np.asarray(boxes, np.float32)))
    return out


def _tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float in [0, 1]."""
    array = np.array(image, dtype=np.float32)  # a writable copy (flips are views)
    return torch.from_numpy(array).permute(2, 0, 1).div(255).to(device)


def train_detector(
    model: nn.Module,
    data: Sequence[BoxSample],
    *,
    steps: int = 200,
    batch_size: int = 2,
    lr: float = 0.01,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` SGD steps (momentum 0.9, weight decay 1e-4, a linear
    warm-up over the first 10 % of the steps, gradients clipped at norm 10) on batches of
    ``batch_size`` images drawn at random, each flipped left-right with probability 0.5.
    Returns the total loss of each step; ``progress(step, loss)`` is called after each."""
    if not data:
        raise ValueError("no training data: the project has no accepted masks to learn boxes from")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    dev = torch.device(device or "cpu")
    model.to(dev).train()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    images = [load_image(d.path) for d in data]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, steps // 10)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        batch, targets = [], []
        for i in rng.integers(len(data), size=min(batch_size, len(data))):
            image, boxes = images[i], data[i].boxes.copy()
            if rng.random() < 0.5:
                image = image[:, ::-1]
                boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
            batch.append(_tensor(image, dev))
            targets.append(
                {
                    "boxes": torch.from_numpy(boxes).to(dev),
                    "labels": torch.ones(len(boxes), dtype=torch.int64, device=dev),
                }
            )
        loss = sum(model(batch, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def detect_boxes(
    detector: Detector, image: np.ndarray, *, min_score: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes of ``image`` (``(H, W, 3)`` uint8 RGB) scoring at least ``min_score``:
    ``(N, 4)`` XYXY pixels float32 and ``(N,)`` scores, highest first."""
    detector.model.eval()
    out = detector.model([_tensor(image, detector.device)])[0]
    keep = out["scores"] >= min_score
    return out["boxes"][keep].cpu().numpy(), out["scores"][keep].cpu().numpy()


def detector_proposals(
    detector: Detector,
    predictor: Any,
    image: np.ndarray,
    *,
    min_score: float = 0.5,
    min_iou: float = 0.88,
) -> list[dict[str, Any]]:
    """Proposals for ``image``: the detector's boxes scoring ``min_score`` or more, given to
    SAM as box prompts in one batch (single-mask output), kept when SAM's predicted IoU is
    ``min_iou`` or more. Each has its COCO RLE ``segmentation``, ``predicted_iou``, the box
    as ``prompts`` (``{"box": [x0, y0, x1, y1], "detector_score": s}``) and no stability
    score."""
    from ...formats import encode_coco_rle

    boxes, scores = detect_boxes(detector, image, min_score=min_score)
    if len(boxes) == 0:
        return []
    predictor.set_image(image)
    masks, ious, _ = predictor.predict(box=boxes.astype(np.float64), multimask_output=False)
    out = []
    for box, score, mask, iou in zip(boxes, scores, masks[:, 0], ious[:, 0], strict=True):
        if float(iou) < min_iou or not mask.any():
            continue
        out.append(
            {
                "segmentation": encode_coco_rle(mask),
                "predicted_iou": float(iou),
                "prompts": {
                    "box": [round(float(v), 2) for v in box],
                    "detector_score": round(float(score), 4),
                },
            }
        )
    return out


def _detectors_dir(root: Path) -> Path:
    return Path(root) / DETECTORS_DIR


def newest_detector(root: str | Path) -> Path:
    """The newest recorded detector's ``.pt`` file in the project ``root``; raises
    NoDetectorError when there is none."""
    folder = _detectors_dir(Path(root))
    found = sorted(
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else [])
        if (m := _NAME.match(p.name)) and p.with_suffix(".pt").is_file()
    )
    if not found:
        raise NoDetectorError(
            f"the project {root} has no detector (none in {folder}); train one with "
            "'segany engine train-detector DIR' or use --method auto"
        )
    return found[-1][1].with_suffix(".pt")


def save_detector(
    root: str | Path, model: nn.Module, arch: str, info: dict[str, Any], out: str | Path | None
) -> Path:
    """Write the detector (``out``, default the next ``DIR/detectors/detector_<n>.pt``) and
    its JSON (``info`` plus ``arch``, ``file`` and ``created``) atomically, the JSON last.
    Returns the ``.pt`` path."""
    if out is None:
        folder = _detectors_dir(Path(root))
        folder.mkdir(parents=True, exist_ok=True)
        taken = [
            int(m.group(1))
            for p in folder.iterdir()
            if (m := re.match(r"^detector_(\d+)\.", p.name))
        ]
        out = folder / f"detector_{max(taken, default=0) + 1}.pt"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"arch": arch, "state_dict": state}, buf)
    write_bytes_atomic(out, buf.getvalue())
    meta = {**info, "arch": arch, "file": out.name, "created": time.time()}
    write_json_atomic(out.with_suffix(".json"), meta, indent=2, newline=True)
    return out


def load_detector(path: str | Path, *, device: str | torch.device | None = None) -> Detector:
    """Load a detector file written by :func:`save_detector` (NoDetectorError if it is not
    one)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        arch = saved["arch"]
        model = build_detector(arch)
        model.load_state_dict(saved["state_dict"])
    except (OSError, KeyError, TypeError, RuntimeError, ValueError) as e:
        raise NoDetectorError(f"{path} is not a segany detector file ({e})") from None
    dev = torch.device(device or "cpu")
    return Detector(model.to(dev).eval(), arch, path.name, dev)


def read_detector_info(path: str | Path) -> dict[str, Any]:
    """The JSON beside a detector's ``.pt`` file."""
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))


def train_project_detector(
    project: Any,
    *,
    steps: int = 200,
    arch: str = "mobilenet_v3",
    device: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 2,
    lr: float = 0.01,
    seed: int = 0,
    sources: Sequence[str] = ("manual",),
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a detector on the boxes of the project's accepted masks of ``sources``
    (:func:`detector_dataset`) and save it (:func:`save_detector`; default the next
    ``DIR/detectors/detector_<n>.pt``). Returns the file and its JSON record: ``arch``,
    ``steps``, ``batch_size``, ``lr``, ``seed``, ``losses`` (per step), ``images`` and
    ``boxes`` (the data size), ``sources``, ``seconds``, ``device``. Raises ValueError for
    bad arguments or a project without accepted masks."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    data = detector_dataset(project, sources)
    if not data:
        raise ValueError(
            f"the project {project.root} has no accepted masks of source "
            f"{', '.join(sources)} to train a detector on; annotate some images first"
        )
    start = time.perf_counter()
    model = build_detector(arch)
    losses = train_detector(
        model, data, steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed,
        progress=progress,
    )  # fmt: skip
    info = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "losses": [round(v, 5) for v in losses],
        "images": len(data),
        "boxes": int(sum(len(d.boxes) for d in data)),
        "sources": list(sources),
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device or "cpu"),
    }
    path = save_detector(project.root, model, arch, info, out)
    return path, read_detector_info(path)
