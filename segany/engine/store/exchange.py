"""Export a project as SA-1B or COCO, and import either back.

Export layouts (``out`` must be missing or an empty folder; it is written as a whole, under a
temporary name renamed at the end):

* ``sa1b``: per image ``n`` (1, 2, ... in image id order) ``out/sa_<n><ext>`` (the image file,
  byte for byte) and ``out/sa_<n>.json``, the official SA-1B per-image JSON
  (:func:`segany.formats.write_sa1b_json`; annotation ids 1, 2, ... across the export). SA-1B
  has no labels or sources; masks without a model score get ``predicted_iou`` and
  ``stability_score`` 1.0, ``crop_box`` defaults to the whole image.
* ``coco``: ``out/instances.json``, one COCO instances file with COCO RLE segmentations
  (:class:`segany.formats.CocoWriter`), and ``out/images/<n:06d><ext>``. Labels become
  categories (``"object"``, id 1, for unlabelled masks); every image keeps the user's
  ``original_file_name``, every annotation its ``label``, ``source``, ``stage``,
  ``point_coords`` and ``crop_box`` (extra keys COCO readers ignore).
* ``polygons=True`` adds ``out/instances_polygons.json``, a derived COCO file (same images,
  ids and file names as the main export; of an SA-1B export it carries only what SA-1B
  carries: no labels or sources) whose segmentations are polygons (pixel-edge coordinates, exact, no simplification)
  wherever polygons represent the mask exactly. COCO polygons cannot have holes (pycocotools
  fills every ring), so a mask with a hole, or any other mask its polygons would change, is
  written there as COCO RLE with ``iscrowd`` 0: it is still one object, not a crowd region,
  and pycocotools decodes either kind. The file's ``info`` says how many masks are RLE.

The export is deterministic: the same project content gives the same bytes, and export ->
import into a fresh project -> export gives identical files.

Import reads an SA-1B folder (or one SA-1B JSON file, images beside it) or a COCO instances
file (images beside it or under ``images/``). Everything is validated first (JSON, masks,
images decoded); then images are added by content and masks added unless the image already
has a mask with the same RLE (importing twice adds nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...formats.coco import CocoWriter
from ...formats.polygons import mask_to_polygons, polygons_to_mask
from ...formats.rle import decode_coco_rle
from ...formats.sa1b import read_sa1b_json, write_sa1b_json
from ...formats.segmentation import as_coco_rle
from ...io.files import IMAGE_SUFFIXES, atomic_dir, write_bytes_atomic
from .checks import canonical_rle
from .errors import InvalidInput
from .media import decode_image
from .models import MASK_SOURCES, STAGES

if TYPE_CHECKING:
    from .records import ImageRecord, MaskRecord

#: A :class:`segany.engine.store.Project` (not imported: the project imports this module).
Project = Any

__all__ = ["EXPORT_FORMATS", "export_project", "import_into"]

#: Values of ``format``.
EXPORT_FORMATS = ("sa1b", "coco")
COCO_FILE = "instances.json"
POLYGON_FILE = "instances_polygons.json"
_INFO = {"description": "annotations exported by segany", "version": "1.0", "contributor": "segany"}
_UNLABELLED = "object"


# ----------------------------------------------------------------------------- export


def export_project(
    project: Project, out: str | os.PathLike, *, format: str = "sa1b", polygons: bool = False
) -> dict[str, Any]:
    """Export every image of ``project`` and its masks to the folder ``out`` (see the module
    docstring). Returns ``{"out", "format", "images", "masks"}`` (and ``"polygon_masks"``,
    ``"rle_masks"`` of the polygon file when ``polygons``)."""
    if format not in EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {list(EXPORT_FORMATS)}; got {format!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty folder; give a new folder")
    items = [(image, project.list_masks(image.id)) for image in project.list_images()]
    report: dict[str, Any] = {
        "out": str(out),
        "format": format,
        "images": len(items),
        "masks": sum(len(m) for _, m in items),
    }
    with atomic_dir(out) as tmp:
        if format == "sa1b":
            names = [f"sa_{n}{image.ext}" for n, (image, _) in enumerate(items, 1)]
            _write_sa1b(project, tmp, items, names)
            image_dir = tmp
        else:
            names = [f"{n:06d}{image.ext}" for n, (image, _) in enumerate(items, 1)]
            image_dir = tmp / "images"
            image_dir.mkdir()
            _coco_writer(items, names, polygons=False, sa1b=False).write(tmp / COCO_FILE)
        for (image, _), name in zip(items, names, strict=True):
            write_bytes_atomic(image_dir / name, project.image_file(image.id).read_bytes())
        if polygons:
            writer = _coco_writer(items, names, polygons=True, sa1b=format == "sa1b")
            writer.write(tmp / POLYGON_FILE)
            report["polygon_masks"] = writer.info["polygon_masks"]
            report["rle_masks"] = writer.info["rle_masks"]
    return report


def _sa1b_annotation(mask: MaskRecord, ann_id: int, image: ImageRecord) -> dict[str, Any]:
    return {
        "id": ann_id,
        "segmentation": mask.segmentation,
        "bbox": mask.bbox,
        "area": mask.area,
        "predicted_iou": 1.0 if mask.predicted_iou is None else mask.predicted_iou,
        "stability_score": 1.0 if mask.stability_score is None else mask.stability_score,
        "crop_box": mask.crop_box or [0, 0, image.width, image.height],
        "point_coords": mask.point_coords or [],
    }


def _write_sa1b(project: Project, tmp: Path, items: list, names: list[str]) -> None:
    ann_id = 0
    for n, ((image, masks), name) in enumerate(zip(items, names, strict=True), 1):
        anns = []
        for mask in masks:
            ann_id += 1
            anns.append(_sa1b_annotation(mask, ann_id, image))
        write_sa1b_json(
            tmp / f"sa_{n}.json", image_id=n, file_name=name, width=image.width,
            height=image.height, annotations=anns,
        )  # fmt: skip


def _coco_writer(items: list, names: list[str], *, polygons: bool, sa1b: bool) -> CocoWriter:
    """A COCO writer of the export. ``sa1b``: only what the SA-1B files carry (no labels,
    sources or stages; scores and crop boxes with the SA-1B defaults), so that the derived
    polygon file of an SA-1B export is also byte-stable through import."""
    labels = sorted(
        {m.label for _, masks in items for m in masks if m.label is not None and not sa1b}
    )
    categories = [{"id": 1, "name": _UNLABELLED, "supercategory": "object"}]
    categories += [
        {"id": i, "name": label, "supercategory": "object"}
        for i, label in enumerate((x for x in labels if x != _UNLABELLED), 2)
    ]
    category = {c["name"]: c["id"] for c in categories}
    writer = CocoWriter(categories=categories, info=dict(_INFO))
    counts = {"polygon": 0, "rle": 0}
    for n, ((image, masks), name) in enumerate(zip(items, names, strict=True), 1):
        extra = {} if sa1b else {"original_file_name": image.file_name}
        writer.add_image(name, image.width, image.height, id=n, **extra)
        for mask in masks:
            if sa1b:
                full = _sa1b_annotation(mask, 0, image)
                writer.add_annotation(n, full, category_id=1)
                ann = writer.annotations[-1]
                ann.update(point_coords=full["point_coords"], crop_box=full["crop_box"])
            else:
                record = {"segmentation": mask.segmentation}
                for key in ("predicted_iou", "stability_score"):
                    if getattr(mask, key) is not None:
                        record[key] = getattr(mask, key)
                cid = category[_UNLABELLED if mask.label is None else mask.label]
                writer.add_annotation(n, record, category_id=cid)
                ann = writer.annotations[-1]
                ann.update(
                    label=mask.label, source=mask.source, stage=mask.stage,
                    point_coords=mask.point_coords or [], crop_box=mask.crop_box,
                )  # fmt: skip
            if polygons:
                exact = _exact_polygons(mask.segmentation)
                counts["rle" if exact is None else "polygon"] += 1
                if exact is not None:
                    ann["segmentation"] = exact  # same pixels: area and bbox unchanged
    if polygons:
        writer.info.update(
            description=(
                "annotations exported by segany, polygon version: masks that COCO polygons "
                "cannot represent exactly (holes) are COCO RLE with iscrowd 0"
            ),
            polygon_masks=counts["polygon"],
            rle_masks=counts["rle"],
        )
    return writer


def _exact_polygons(rle: Mapping[str, Any]) -> list[list[float]] | None:
    """The mask's exact pixel-edge polygons, or None when polygons cannot represent it."""
    mask = decode_coco_rle(rle)
    polys = mask_to_polygons(mask, tolerance=0)
    h, w = mask.shape
    if polys and np.array_equal(polygons_to_mask(polys, h, w), mask):
        return polys
    return None


# ----------------------------------------------------------------------------- import


def import_into(
    project: Project,
    path: str | os.PathLike,
    *,
    source: str | None = None,
    stage: int | None = None,
) -> dict[str, int]:
    """Import an SA-1B folder or JSON file, or a COCO instances file, into ``project`` (see
    the module docstring). ``source`` / ``stage``, when given, are set on every imported mask
    (e.g. ``"auto"`` and 3 for the fully automatic stage's shards) instead of what the files
    say. Returns ``{"images_added", "images_existing", "masks_added", "masks_existing"}``.
    Raises InvalidInput, importing nothing, when a file is malformed, an image is missing or
    invalid, or ``source`` / ``stage`` is not a valid value."""
    if source is not None and source not in MASK_SOURCES:
        raise InvalidInput(f"source must be one of {list(MASK_SOURCES)}; got {source!r}")
    if stage is not None and stage not in STAGES:
        raise InvalidInput(f"stage must be one of {list(STAGES)}; got {stage!r}")
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        sa1b = [f for f in files if _json_kind(f) == "sa1b"]
        if not sa1b:
            raise InvalidInput(
                f"{path} holds no SA-1B JSON files; give an SA-1B folder (<stem>.json next to "
                "<stem>.jpg) or a COCO instances .json file"
            )
        plan = _plan_sa1b(sa1b)
    elif path.is_file():
        kind = _json_kind(path)
        if kind == "coco":
            plan = _plan_coco(path)
        elif kind == "sa1b":
            plan = _plan_sa1b([path])
        else:
            raise InvalidInput(f"{path} is neither an SA-1B JSON file nor a COCO instances file")
    else:
        raise InvalidInput(f"{path}: no such file or folder")
    for image_path, _, masks in plan:  # validate every image and mask before adding any
        decoded = decode_image(image_path.read_bytes(), str(image_path))
        for fields in masks:
            if source is not None:
                fields["source"] = source
            if stage is not None:
                fields["stage"] = stage
            try:
                fields["segmentation"] = canonical_rle(
                    fields["segmentation"], decoded.height, decoded.width
                )[0]
            except InvalidInput as e:
                raise InvalidInput(f"{image_path}: {e}") from None
    report = {"images_added": 0, "images_existing": 0, "masks_added": 0, "masks_existing": 0}
    for image_path, file_name, masks in plan:
        image, created = project.add_image_file(image_path, file_name=file_name)
        report["images_added" if created else "images_existing"] += 1
        have = {m.segmentation["counts"] for m in project.list_masks(image.id)}
        for fields in masks:
            rle = fields.pop("segmentation")
            if rle["counts"] in have:
                report["masks_existing"] += 1
                continue
            if fields.get("crop_box") == [0, 0, image.width, image.height]:
                fields["crop_box"] = None
            project.add_mask(image.id, segmentation=rle, **fields)
            have.add(rle["counts"])
            report["masks_added"] += 1
    return report


def _json_kind(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInput(f"{path} is not a readable JSON file") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return "coco"
    if isinstance(data, dict) and isinstance(data.get("image"), dict):
        return "sa1b"
    return None


def _find_image(base: Path, file_name: Any, stem: str | None, where: str) -> Path:
    """The image file ``file_name`` inside ``base`` (or ``base/images``); never outside."""
    candidates = []
    if isinstance(file_name, str) and file_name and "\x00" not in file_name:
        rel = Path(file_name)
        if not rel.is_absolute() and ".." not in rel.parts:
            candidates += [base / rel, base / "images" / rel]
    if stem is not None:
        candidates += [base / f"{stem}{s}" for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise InvalidInput(
        f"{where}: image {file_name!r} not found in {base} or {base / 'images'} (names must be "
        "relative, without '..')"
    )


def _sa1b_key(item: tuple[Path, dict]) -> tuple:
    image_id = item[1]["image"]["image_id"]
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


def _plan_sa1b(files: list[Path]) -> list[tuple[Path, str, list[dict[str, Any]]]]:
    records = []
    for f in files:
        try:
            records.append((f, read_sa1b_json(f)))
        except ValueError as e:
            raise InvalidInput(str(e)) from None
    plan = []
    for f, record in sorted(records, key=_sa1b_key):
        image = record["image"]
        image_path = _find_image(f.parent, image["file_name"], f.stem, str(f))
        masks = [
            {
                "segmentation": ann["segmentation"],
                "source": ann["source"] if ann.get("source") in MASK_SOURCES else "manual",
                "predicted_iou": ann["predicted_iou"],
                "stability_score": ann["stability_score"],
                "point_coords": ann["point_coords"] or None,
                "crop_box": ann["crop_box"],
            }
            for ann in record["annotations"]
        ]
        plan.append((image_path, Path(image["file_name"]).name or image_path.name, masks))
    return plan


def _plan_coco(path: Path) -> list[tuple[Path, str, list[dict[str, Any]]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    where = str(path)
    anns = data.get("annotations", [])
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise InvalidInput(f"{where}: 'annotations' must be a list of objects")
    names = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    by_image: dict[Any, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    plan = []
    for i, image in enumerate(data["images"]):
        at = f"{where}: images[{i}]"
        if not isinstance(image, dict) or "id" not in image:
            raise InvalidInput(f"{at} must be an object with an 'id'")
        h, w = image.get("height"), image.get("width")
        image_path = _find_image(path.parent, image.get("file_name"), None, at)
        masks = []
        for j, ann in enumerate(by_image.get(image["id"], [])):
            try:
                rle = as_coco_rle(ann.get("segmentation"), h, w)
            except (ValueError, TypeError) as e:
                raise InvalidInput(f"{at}: annotation {ann.get('id', j)!r}: {e}") from None
            if "label" in ann:
                label = ann["label"]
            else:
                name = names.get(ann.get("category_id"))
                label = None if name in (None, _UNLABELLED) else str(name)
            masks.append(
                {
                    "segmentation": rle,
                    "source": ann["source"] if ann.get("source") in MASK_SOURCES else "manual",
                    "stage": ann["stage"] if ann.get("stage") in STAGES else 1,
                    "label": label,
                    "predicted_iou": ann.get("predicted_iou"),
                    "stability_score": ann.get("stability_score"),
                    "point_coords": ann.get("point_coords") or None,
                    "crop_box": ann.get("crop_box"),
                }
            )
        name = image.get("original_file_name") or Path(str(image.get("file_name"))).name
        plan.append((image_path, str(name), masks))
    return plan
