"""Real images with ground truth that an installed third-party package ships, read in place.

segany does not ship or copy these files. They are read from the package's own install
folder, so a test or benchmark can score the zero-shot tasks on a real image. The package is
located with :func:`importlib.util.find_spec` and is never imported, so none of its code runs.

* :func:`stardist_nuclei`: the 2-D fluorescence nuclei image and its instance labels that the
  ``stardist`` wheel (BSD-3-Clause) ships in ``stardist/data/images/``: ``img2d.tif`` and
  ``mask2d.tif``. They are 512x512, with 125 nuclei, and come from the 2018 Data Science Bowl
  (Caicedo et al., Nature Methods 16, 2019; the BBBC038 images are CC0). Reading them needs
  ``tifffile``. Both packages are test dependencies (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["labels_to_masks", "package_data_dir", "stardist_nuclei"]


def package_data_dir(package: str, *parts: str) -> Path:
    """The folder ``parts`` inside the installed ``package``; the package is not imported.

    Raises:
        FileNotFoundError: the package is not installed or lacks the folder (the message says
            how to install it).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is not installed; `pip install -e '.[test]'` installs it"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing from the installed {package!r}")
    return folder


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """A ``(H, W)`` image of any dtype -> ``(H, W)`` uint8. Values are stretched linearly
    between the 1st and 99.8th percentiles, as microscopy viewers do."""
    img = np.asarray(image, np.float64)
    lo, hi = np.percentile(img, [1.0, 99.8])
    scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def labels_to_masks(labels: np.ndarray) -> np.ndarray:
    """An instance label image ``(H, W)`` (0 is background) -> ``(N, H, W)`` bool masks. The
    masks are in increasing label order, one per label present."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W); got shape {lab.shape}")
    ids = np.unique(lab)
    ids = ids[ids != 0]
    return lab[None] == ids[:, None, None]


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The stardist nuclei sample, ``(image, masks)``.

    ``image`` is ``(512, 512, 3)`` uint8 RGB: the uint16 grey image stretched to 8 bits, in
    three equal channels. ``masks`` is ``(N, 512, 512)`` bool, one mask per nucleus.
    """
    import tifffile

    folder = package_data_dir("stardist", "data", "images")
    grey = _to_uint8(tifffile.imread(folder / "img2d.tif"))
    labels = tifffile.imread(folder / "mask2d.tif")
    if grey.shape != labels.shape:
        raise ValueError(f"stardist sample: image {grey.shape} and labels {labels.shape} differ")
    return np.repeat(grey[..., None], 3, axis=-1), labels_to_masks(labels)
