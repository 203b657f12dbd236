"""Map-style datasets of images with instance masks, for evaluation and training.

Every dataset here returns a :class:`Sample`: an ``(H, W, 3)`` uint8 RGB image, its
``(K, H, W)`` bool instance masks (``K`` may be 0) and a name that is unique within the
dataset and safe as a file stem. Sources:

* :class:`SA1BFolder` — a folder in the SA-1B layout: ``<stem>.jpg`` (or another image suffix)
  next to ``<stem>.json`` holding COCO-RLE annotations (:mod:`segany.formats.sa1b`);
* :class:`CocoInstances` — a COCO "instances" JSON and its image folder (polygon, COCO RLE
  and uncompressed RLE segmentations; ``iscrowd=1`` annotations are skipped);
* :class:`SceneSamples` — generated scenes of :class:`segany.data.scenes.ProceduralScenes`.

:func:`open_dataset` builds one from a short spec (a folder, a ``.json`` file,
``"procedural:N[:seed]"`` or a dict) and :func:`write_sa1b_dataset` freezes any dataset to an
SA-1B folder (e.g. a held-out generated set), resumably.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..formats.rle import decode_coco_rle
from ..formats.sa1b import read_sa1b_json, sa1b_masks, write_sa1b_json
from ..formats.segmentation import as_coco_rle
from ..io.files import IMAGE_SUFFIXES
from ..io.image import load_image
from .captions import HELD_OUT_COMBINATIONS
from .scenes import ProceduralScenes, Scene, SceneConfig

__all__ = [
    "CocoInstances",
    "MaskDataset",
    "SA1BFolder",
    "Sample",
    "SceneSamples",
    "open_dataset",
    "write_sa1b_dataset",
]

#: Image file suffixes looked for next to an SA-1B JSON file, in order of preference: every
#: image suffix in lower case, then in upper case.
_PAIRED_SUFFIXES = (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES))

_SPEC_HELP = (
    "a dataset spec is one of: a folder in the SA-1B layout (<stem>.jpg|png + <stem>.json), "
    "a COCO instances .json file (images next to it or under images/), "
    "'procedural:N[:seed]', 'procedural-text:N[:seed]' (named colours, captions), or a dict "
    "with 'type' 'sa1b' (root), 'coco' (annotations, images) or 'procedural' (length, seed, "
    "height, width, palette, exclude_held_out)"
)


@dataclass
class Sample:
    """One image with its instance masks.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(K, H, W)`` bool, one mask per instance (``K`` may be 0).
        name: unique within its dataset, usable as a file stem (no ``/``).
    """

    image: np.ndarray
    masks: np.ndarray
    name: str


class MaskDataset(Protocol):
    """What the evaluation and :func:`write_sa1b_dataset` need: ``len`` and ``[i] -> Sample``
    (optionally ``name(i)``, the sample's name without loading it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Sample: ...


def _index(i: int, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"sample index out of range [0, {n})")
    return i


def _check_shapes(image: np.ndarray, masks: np.ndarray, where: str) -> None:
    if masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"{where}: masks are {masks.shape[2]}x{masks.shape[1]} (WxH) but the image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )


# --------------------------------------------------------------------------- SA-1B folder


class SA1BFolder:
    """A folder in the SA-1B layout: one ``<stem>.json`` (SA-1B per-image JSON, COCO RLE
    masks) per image ``<stem>.jpg`` / ``.jpeg`` / ``.png`` (or any suffix of
    :data:`segany.io.files.IMAGE_SUFFIXES`, lower or upper case), samples sorted by stem.

    JSON files without an image of the same stem are ignored (so other JSON files may sit in
    the folder). ``Sample.name`` is the stem; masks are in annotation order.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no image + JSON pair.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-1B folder not found: {self.root}")
        pairs: list[tuple[Path, Path]] = []
        for js in sorted(self.root.glob("*.json")):
            image = next(
                (p for s in _PAIRED_SUFFIXES if (p := js.with_suffix(s)).is_file()),
                None,
            )
            if image is not None:
                pairs.append((image, js))
        if not pairs:
            raise FileNotFoundError(
                f"{self.root} holds no SA-1B samples: expected <stem>.jpg|.jpeg|.png next to "
                f"<stem>.json (COCO RLE annotations) for each image"
            )
        self.files = pairs

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        """The ``i``-th sample's name (its file stem)."""
        return self.files[_index(i, len(self))][1].stem

    def __getitem__(self, i: int) -> Sample:
        image_path, json_path = self.files[_index(i, len(self))]
        masks = sa1b_masks(read_sa1b_json(json_path))
        image = load_image(image_path)
        _check_shapes(image, masks, str(json_path))
        return Sample(image=image, masks=masks, name=json_path.stem)

    def __repr__(self) -> str:
        return f"SA1BFolder({str(self.root)!r}, {len(self)} images)"


# --------------------------------------------------------------------------- COCO instances


def _coco_mask(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """One COCO segmentation (polygons, COCO RLE or uncompressed RLE) as ``(H, W)`` bool."""
    if isinstance(seg, list):
        # polygon parts with fewer than 3 vertices cover no area (pycocotools would even
        # read a 4-number part as a box): drop them
        seg = [p for p in seg if isinstance(p, list | tuple) and len(p) >= 6]
        if not seg:
            return np.zeros((height, width), dtype=bool)
    try:
        return decode_coco_rle(as_coco_rle(seg, height, width))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


class CocoInstances:
    """A COCO instances JSON (``images``, ``annotations``) and the folder of its images.

    One sample per entry of ``images`` (in file order, including images without
    annotations: their masks are ``(0, H, W)``). Segmentations may be polygons
    (``[[x1, y1, ...], ...]``, pixel-edge coordinates), COCO RLE or uncompressed RLE;
    annotations with ``iscrowd=1`` are skipped. ``Sample.name`` is the image's ``file_name``
    without its suffix, with ``/`` replaced by ``__``.

    Args:
        annotation_json: path of the COCO JSON file.
        image_dir: folder that ``file_name`` entries are relative to; default ``images/``
            next to the JSON when that folder holds the first listed image (or the first
            image is found nowhere), else the JSON's own folder.

    Raises:
        FileNotFoundError: the JSON file or the image folder is missing.
        ValueError: the JSON is not a COCO instances file (what is missing is named).
    """

    def __init__(
        self, annotation_json: str | os.PathLike, image_dir: str | os.PathLike | None = None
    ) -> None:
        self.annotation_json = Path(annotation_json)
        if not self.annotation_json.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotation_json}")
        data = _read_json(self.annotation_json)
        where = str(self.annotation_json)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{where}: not a COCO instances file (no 'images' list)")
        self.image_dir = (
            _coco_image_dir(self.annotation_json, data["images"])
            if image_dir is None
            else Path(image_dir)
        )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.image_dir}")
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            raise ValueError(f"{where}: 'annotations' must be a list")
        self.images: list[dict[str, Any]] = []
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not all(
                key in im for key in ("id", "file_name", "height", "width")
            ):
                raise ValueError(
                    f"{where}: images[{k}] must have 'id', 'file_name', 'height' and 'width'"
                )
            self.images.append(im)
        ids = {im["id"] for im in self.images}
        self.annotations: dict[Any, list[dict[str, Any]]] = {i: [] for i in ids}
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
                raise ValueError(
                    f"{where}: annotations[{k}] must have 'image_id' and 'segmentation'"
                )
            if ann.get("iscrowd", 0):
                continue
            if ann["image_id"] not in ids:
                raise ValueError(
                    f"{where}: annotations[{k}] refers to image_id {ann['image_id']!r}, "
                    f"which is not in 'images'"
                )
            self.annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        """The ``i``-th sample's name (``file_name`` without suffix, ``/`` -> ``__``)."""
        file_name = str(self.images[_index(i, len(self))]["file_name"])
        return str(Path(file_name).with_suffix("")).replace(os.sep, "__").replace("/", "__")

    def __getitem__(self, i: int) -> Sample:
        i = _index(i, len(self))
        info = self.images[i]
        h, w = int(info["height"]), int(info["width"])
        image = load_image(self.image_dir / info["file_name"])
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"{self.image_dir / info['file_name']} is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotation_json} says {w}x{h} (width x height)"
            )
        anns = self.annotations[info["id"]]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for k, ann in enumerate(anns):
            where = f"{self.annotation_json}: annotation id {ann.get('id', '?')}"
            masks[k] = _coco_mask(ann["segmentation"], h, w, where)
        return Sample(image=image, masks=masks, name=self.name(i))

    def __repr__(self) -> str:
        return f"CocoInstances({str(self.annotation_json)!r}, {len(self)} images)"


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None


# --------------------------------------------------------------------------- procedural


class SceneSamples:
    """:class:`~segany.data.scenes.ProceduralScenes` as :class:`Sample` s named
    ``scene_{i:06d}`` (all mask levels: objects, parts and sub-parts)."""

    def __init__(self, scenes: ProceduralScenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def name(self, i: int) -> str:
        """``scene_{i:06d}``."""
        return f"scene_{_index(i, len(self)):06d}"

    def __getitem__(self, i: int) -> Sample:
        i = _index(i, len(self))
        scene = self.scenes[i]
        return Sample(image=scene.image, masks=scene.masks, name=self.name(i))

    def scene(self, i: int) -> Scene:
        """Scene ``i`` itself, with levels, parents and attributes (for captions)."""
        return self.scenes[_index(i, len(self))]

    def __repr__(self) -> str:
        s = self.scenes
        extra = ", palette=True" if s.config.palette else ""
        return (
            f"SceneSamples(length={len(s)}, seed={s.seed}, "
            f"size={s.config.height}x{s.config.width}{extra})"
        )


# --------------------------------------------------------------------------- open_dataset


def _positive_int(value: Any, what: str) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer; got {value!r}") from None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{what} must be an integer; got {value!r}")
    if v <= 0:
        raise ValueError(f"{what} must be positive; got {value!r}")
    return v


def _procedural(
    length: Any,
    seed: Any = 0,
    height: Any = None,
    width: Any = None,
    palette: Any = False,
    exclude_held_out: Any = False,
) -> SceneSamples:
    n = _positive_int(length, "procedural length")
    for value, what in ((palette, "palette"), (exclude_held_out, "exclude_held_out")):
        if not isinstance(value, bool):
            raise ValueError(f"procedural {what} must be true or false; got {value!r}")
    if exclude_held_out and not palette:
        raise ValueError("procedural exclude_held_out needs palette (named colours)")
    try:
        s = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"procedural seed must be an integer; got {seed!r}") from None
    base = SceneConfig()
    h = base.height if height is None else _positive_int(height, "procedural height")
    w = base.width if width is None else _positive_int(width, "procedural width")
    excluded = HELD_OUT_COMBINATIONS if exclude_held_out else ()
    config = SceneConfig(
        **{
            **base.__dict__,
            "height": h,
            "width": w,
            "palette": palette,
            "excluded_combinations": excluded,
        }
    )
    return SceneSamples(ProceduralScenes(n, seed=s, config=config))


def _coco_image_dir(annotation_json: Path, images: list[Any]) -> Path:
    """``images/`` next to the JSON when it holds the first listed image (or exists and the
    first image cannot be told), else the JSON's own folder."""
    parent = annotation_json.parent
    sub = parent / "images"
    if not sub.is_dir():
        return parent
    try:
        first = str(images[0]["file_name"])
    except (KeyError, IndexError, TypeError):
        return sub
    if (sub / first).is_file() or not (parent / first).is_file():
        return sub
    return parent


def open_dataset(spec: str | os.PathLike | Mapping[str, Any]) -> MaskDataset:
    """Open a dataset from a spec.

    Accepted specs:

    * a folder: :class:`SA1BFolder`;
    * a ``.json`` file: :class:`CocoInstances`, images under ``images/`` next to it if that
      folder exists (and holds the first image), else next to the JSON;
    * ``"procedural:N"`` or ``"procedural:N:SEED"``: ``N`` generated 256x256 scenes
      (:class:`SceneSamples`, seed 0 by default); ``"procedural-text:N[:SEED]"`` the same with
      named colours (``palette``), so :mod:`segany.data.captions` can caption them;
    * a dict: ``{"type": "sa1b", "root": DIR}``, ``{"type": "coco", "annotations": FILE,
      "images": DIR}`` (``images`` optional, found as above) or ``{"type": "procedural",
      "length": N, "seed": S, "height": H, "width": W}`` (all but ``length`` optional).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: anything else that is not a spec above (the message lists what is
            allowed).
    """
    if isinstance(spec, Mapping):
        return _open_dict(spec)
    if not isinstance(spec, str | os.PathLike):
        raise ValueError(f"unsupported dataset spec {spec!r}: {_SPEC_HELP}")
    text = os.fspath(spec)
    kind = text.split(":")[0]
    if kind in ("procedural", "procedural-text"):
        parts = text.split(":")[1:]
        if not 1 <= len(parts) <= 2 or not all(p.strip() for p in parts):
            raise ValueError(
                f"invalid procedural spec {text!r}: expected '{kind}:N' or "
                f"'{kind}:N:SEED' (e.g. {kind}:200:1)"
            )
        try:
            return _procedural(*parts, palette=kind == "procedural-text")
        except ValueError as e:
            raise ValueError(f"invalid procedural spec {text!r}: {e}") from None
    path = Path(text).expanduser()
    if path.is_dir():
        return SA1BFolder(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return CocoInstances(path)
        raise ValueError(f"cannot open {path} as a dataset: {_SPEC_HELP}")
    raise FileNotFoundError(f"dataset not found: {path} does not exist ({_SPEC_HELP})")


def _open_dict(spec: Mapping[str, Any]) -> MaskDataset:
    kind = spec.get("type")
    allowed = {
        "sa1b": {"type", "root"},
        "coco": {"type", "annotations", "images"},
        "procedural": {
            "type",
            "length",
            "seed",
            "height",
            "width",
            "palette",
            "exclude_held_out",
        },
    }
    if kind not in allowed:
        raise ValueError(f"dataset dict needs 'type' in {sorted(allowed)}; got {kind!r}")
    unknown = set(spec) - allowed[kind]
    if unknown:
        raise ValueError(
            f"unknown keys {sorted(unknown)} for a {kind!r} dataset; allowed: "
            f"{sorted(allowed[kind])}"
        )
    if kind == "sa1b":
        if "root" not in spec:
            raise ValueError("an 'sa1b' dataset dict needs 'root' (the folder)")
        return SA1BFolder(spec["root"])
    if kind == "coco":
        if "annotations" not in spec:
            raise ValueError("a 'coco' dataset dict needs 'annotations' (the JSON file)")
        images = spec.get("images")
        return CocoInstances(
            Path(spec["annotations"]).expanduser(), Path(images).expanduser() if images else None
        )
    if "length" not in spec:
        raise ValueError("a 'procedural' dataset dict needs 'length' (number of scenes)")
    return _procedural(
        spec["length"],
        spec.get("seed", 0),
        spec.get("height"),
        spec.get("width"),
        spec.get("palette", False),
        spec.get("exclude_held_out", False),
    )


# --------------------------------------------------------------------------- writing


def _sample_name(dataset: Any, i: int) -> str | None:
    name = getattr(dataset, "name", None)
    return name(i) if callable(name) else None


def write_sa1b_dataset(
    dataset: MaskDataset,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write every sample as ``<name>.png`` + ``<name>.json`` (SA-1B per-image JSON with
    COCO RLE masks) into ``out_dir`` (created), so that :class:`SA1BFolder` reads back the
    same images (PNG is lossless) and masks, in order of name.

    Each file is written atomically (the JSON after the PNG), so an interrupted run leaves no
    partial files; samples whose two files already exist are skipped (without generating
    them when the dataset has ``name(i)``), so a re-run resumes. ``predicted_iou`` and
    ``stability_score`` are stored as 1.0 (ground truth). Returns the JSON paths, one per
    sample.

    Raises:
        ValueError: a sample name is not a plain file stem, or two samples share a name.
    """
    from ..viz import save_image_png

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    indices: Any = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="writing", unit="image")
    written: list[Path] = []
    seen: set[str] = set()
    for i in indices:
        name = _sample_name(dataset, i)
        sample = None
        if name is None:
            sample = dataset[i]
            name = sample.name
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ValueError(f"sample {i} has name {name!r}, which is not a plain file stem")
        if name in seen:
            raise ValueError(f"two samples are named {name!r}; names must be unique")
        seen.add(name)
        png, js = out / f"{name}.png", out / f"{name}.json"
        written.append(js)
        if not overwrite and png.is_file() and js.is_file():
            continue
        if sample is None:
            sample = dataset[i]
        image = np.asarray(sample.image)
        masks = np.asarray(sample.masks, dtype=bool)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"sample {name!r}: image must be (H, W, 3) uint8; got {image.shape} {image.dtype}"
            )
        if masks.ndim != 3:
            raise ValueError(f"sample {name!r}: masks must be (K, H, W); got {masks.shape}")
        _check_shapes(image, masks, f"sample {name!r}")
        h, w = image.shape[:2]
        save_image_png(png, image)
        write_sa1b_json(
            js,
            image_id=i,
            file_name=png.name,
            width=w,
            height=h,
            annotations=[
                {"segmentation": m, "predicted_iou": 1.0, "stability_score": 1.0} for m in masks
            ],
        )
    return written
