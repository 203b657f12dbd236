"""Reading edge-detection data: BSDS500's own layout and plain folders.

* BSDS500: ``ROOT/images/test/*.jpg`` (also ``ROOT/data/images/test``) and
  ``ROOT/groundTruth/test/NAME.mat``, each holding a cell array ``groundTruth`` of annotators
  with a ``Boundaries`` field (read with ``scipy.io.loadmat``).
* Plain folders: images in ``DIR``; ground truth in ``--gt GT_DIR`` as ``NAME.png`` (one
  annotator; non-zero = boundary), ``NAME_K.png`` (several annotators) or ``NAME.mat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.files import is_image_file

__all__ = ["EdgeSample", "find_samples", "load_boundaries", "load_mat_boundaries"]


@dataclass
class EdgeSample:
    """One image: its ``name`` (file stem), ``image`` path and ground-truth files (may be
    empty: no ground truth)."""

    name: str
    image: Path
    gt_files: list[Path]


def load_mat_boundaries(path: str | os.PathLike) -> list[np.ndarray]:
    """The annotators' ``(H, W)`` bool boundary maps of a BSDS ``groundTruth/*.mat`` file."""
    from scipy.io import loadmat

    data = loadmat(str(path))
    if "groundTruth" not in data:
        raise ValueError(f"{path}: no 'groundTruth' cell array (not a BSDS500 ground-truth file)")
    cells = data["groundTruth"].ravel()
    out = []
    for cell in cells:
        entry = cell[0, 0] if cell.ndim == 2 else cell
        out.append(np.asarray(entry["Boundaries"]).astype(bool))
    if not out:
        raise ValueError(f"{path}: no annotators")
    return out


def load_boundaries(files: list[Path]) -> list[np.ndarray]:
    """All annotators' boundary maps from ``.mat`` and ``.png`` files."""
    maps: list[np.ndarray] = []
    for f in files:
        if f.suffix.lower() == ".mat":
            maps.extend(load_mat_boundaries(f))
        else:
            a = np.asarray(Image.open(f))
            if a.ndim == 3:
                a = a[..., :3].max(axis=-1)
            maps.append(a != 0)
    return maps


def _gt_for(name: str, gt_dir: Path) -> list[Path]:
    mat = gt_dir / f"{name}.mat"
    if mat.is_file():
        return [mat]
    png = gt_dir / f"{name}.png"
    several = sorted(gt_dir.glob(f"{name}_*.png"))
    several = [p for p in several if p.stem[len(name) + 1 :].isdigit()]
    return ([png] if png.is_file() else []) + several


def find_samples(root: str | os.PathLike, gt: str | os.PathLike | None = None) -> list[EdgeSample]:
    """The images of ``root`` (a BSDS500 root or a folder of images), sorted by name, with their
    ground-truth files (from ``gt``, or BSDS500's ``groundTruth/test`` when ``root`` is a
    BSDS500 root). Raises ``ValueError`` for a missing folder or one with no images."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    images_dir, gt_dir = root, Path(gt) if gt is not None else None
    for base in (root, root / "data"):
        if (base / "images" / "test").is_dir():
            images_dir = base / "images" / "test"
            if gt_dir is None and (base / "groundTruth" / "test").is_dir():
                gt_dir = base / "groundTruth" / "test"
            break
    if gt_dir is not None and not gt_dir.is_dir():
        raise ValueError(f"ground-truth folder {gt_dir} is not a folder")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and is_image_file(p))
    if not images:
        raise ValueError(f"no images in {images_dir}")
    return [
        EdgeSample(p.stem, p, _gt_for(p.stem, gt_dir) if gt_dir is not None else []) for p in images
    ]
