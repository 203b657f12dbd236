"""Frozen dataset versions: the accepted masks of chosen data-engine stages, split into a
training set and a fixed held-out set of images, written once in SA-1B layout.

Layout of a dataset version ``DIR/datasets/<name>/`` (``name`` is ``v0001``, ``v0002``, ...)::

    train/manual/<sha256>.json + <sha256><ext>   training images with their manual masks
    train/other/<sha256>.json + <sha256><ext>    training images with their prefill/auto masks
    holdout/<sha256>.json + <sha256><ext>        held-out images with all their chosen masks
    manifest.json                                name, content hash, stages, splits, and per
                                                 image its sha256 and its masks' ids, versions,
                                                 sources and stages

Each subfolder is an SA-1B folder (:class:`segany.data.datasets.SA1BFolder`; the per-image
JSON of :func:`segany.formats.write_sa1b_json`, annotation ids = the project's mask ids, the
image files byte for byte) and is present only when it has images. The folder is written
under a temporary name and renamed as a whole (:func:`segany.io.files.atomic_dir`), then
recorded in the project's database (:meth:`Project.add_dataset_version`). An image with
manual and other masks is in both training folders, each with its own masks, so that
repeating ``train/manual`` ``K`` times in the training data (:meth:`Snapshot.train_specs`)
oversamples the manual masks' images ``K`` times.

The held-out split (:func:`holdout_split`) depends only on each image's sha256, so that an
image stays held out across retrains, and once held out an image is never trained on: the
newest dataset version's held-out images stay held out in the next.

The content hash is the sha256 of the canonical JSON of the split's images (sha256) and their
masks (COCO RLE counts, size, source, stage), in sorted order: the same content gives the
same hash, whatever the mask ids, edit versions or the project it is in. Snapshotting the same
content and stages again returns the existing version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...formats.sa1b import write_sa1b_json
from ...io.files import atomic_dir, write_bytes_atomic, write_json_atomic
from ..store import STAGES, DatasetVersion, InvalidInput, MaskRecord, Project

__all__ = [
    "DATASETS_DIR",
    "HOLDOUT_FRACTION",
    "MANIFEST_NAME",
    "Snapshot",
    "check_oversample",
    "check_stages",
    "holdout_key",
    "holdout_split",
    "open_snapshot",
    "snapshot",
]

#: The project's subfolder of dataset versions.
DATASETS_DIR = "datasets"
#: The manifest file of a dataset version.
MANIFEST_NAME = "manifest.json"
#: The default fraction of the project's images held out.
HOLDOUT_FRACTION = 0.1
_MANIFEST_FORMAT = "segany-dataset-version"
_MANUAL, _OTHER, _HOLDOUT = "train/manual", "train/other", "holdout"


def check_stages(stages: Iterable[int]) -> tuple[int, ...]:
    """``stages`` as a sorted tuple of distinct data-engine stages (1, 2, 3); InvalidInput
    when empty or with another value."""
    try:
        values = sorted({int(s) for s in stages})
    except (TypeError, ValueError):
        raise InvalidInput(
            f"stages must be data-engine stages {list(STAGES)}; got {stages!r}"
        ) from None
    if not values or any(s not in STAGES for s in values):
        raise InvalidInput(
            f"stages must be a non-empty list of data-engine stages {list(STAGES)}; got {values}"
        )
    return tuple(values)


def check_oversample(oversample_manual: int) -> int:
    """``oversample_manual`` if it is an integer >= 1, else InvalidInput."""
    if isinstance(oversample_manual, bool) or not isinstance(oversample_manual, int):
        raise InvalidInput(f"oversample_manual must be an integer; got {oversample_manual!r}")
    if oversample_manual < 1:
        raise InvalidInput(f"oversample_manual must be >= 1; got {oversample_manual}")
    return oversample_manual


def holdout_key(sha256: str) -> float:
    """An image's position in ``[0, 1)``: the first 64 bits of its sha256 over ``2**64``."""
    return int(sha256[:16], 16) / 2.0**64


def holdout_split(
    shas: Sequence[str],
    fraction: float = HOLDOUT_FRACTION,
    *,
    previous: Iterable[str] = (),
    eligible: Iterable[str] | None = None,
) -> set[str]:
    """The held-out images among ``shas`` (image sha256 hex digests).

    An image is held out when :func:`holdout_key` of its sha256 is below ``fraction``, or
    when it is in ``previous`` (held out before: it stays held out). When that holds out
    none of two or more images, the one of ``eligible`` (default: all; e.g. the images with
    masks) with the smallest key is held out, so that there is something to evaluate on.
    Adding images never moves an image from the held-out set to training.
    """
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not (0 <= fraction < 1)
    ):
        raise InvalidInput(f"the held-out fraction must be in [0, 1); got {fraction!r}")
    present = set(shas)
    held = {s for s in present if holdout_key(s) < fraction} | (set(previous) & present)
    if not held and len(present) >= 2:
        pool = present if eligible is None else set(eligible) & present
        if pool:
            held.add(min(pool, key=lambda s: (holdout_key(s), s)))
    return held


@dataclass(frozen=True)
class Snapshot:
    """A dataset version on disk: its record, its folder and its manifest."""

    version: DatasetVersion
    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def content_hash(self) -> str:
        return self.version.content_hash

    @property
    def holdout_dir(self) -> Path | None:
        """The held-out SA-1B folder (None when no held-out image has masks)."""
        path = self.root / _HOLDOUT
        return path if path.is_dir() else None

    def train_specs(self, oversample_manual: int = 1) -> list[str]:
        """The training data specs (:func:`segany.data.datasets.open_dataset`): the manual
        masks' folder ``oversample_manual`` times, then the prefill/auto masks' folder."""
        check_oversample(oversample_manual)
        specs = []
        if (self.root / _MANUAL).is_dir():
            specs += [str(self.root / _MANUAL)] * oversample_manual
        if (self.root / _OTHER).is_dir():
            specs.append(str(self.root / _OTHER))
        return specs


def open_snapshot(project: Project, version: DatasetVersion | str) -> Snapshot:
    """The dataset version ``version`` (a record or a name) of ``project``."""
    if not isinstance(version, DatasetVersion):
        version = project.get_dataset_version(version)
    root = project.root / version.path
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    return Snapshot(version, root, manifest)


def _mask_key(mask: MaskRecord) -> list[Any]:
    seg = mask.segmentation
    return [seg["counts"], list(seg["size"]), mask.source, mask.stage]


def _collect(
    project: Project, stages: tuple[int, ...]
) -> tuple[list[Any], dict[int, list[MaskRecord]]]:
    """The images and, per image, its masks of ``stages`` that are accepted: a prefilled proposal
    no annotator has reviewed yet is not training data."""
    images = project.list_images()
    pending = {k for k, state in project.proposal_states().items() if state == "proposal"}
    masks = {
        image.id: [
            m for m in project.list_masks(image.id) if m.stage in stages and m.id not in pending
        ]
        for image in images
    }
    return images, masks


def _content_hash(groups: dict[str, list[tuple[Any, list[MaskRecord]]]]) -> str:
    canon = {
        split: sorted([image.sha256, sorted(_mask_key(m) for m in masks)] for image, masks in items)
        for split, items in sorted(groups.items())
    }
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _annotation(mask: MaskRecord, width: int, height: int) -> dict[str, Any]:
    return {
        "id": mask.id,
        "segmentation": mask.segmentation,
        "predicted_iou": 1.0 if mask.predicted_iou is None else mask.predicted_iou,
        "stability_score": 1.0 if mask.stability_score is None else mask.stability_score,
        "point_coords": mask.point_coords or [],
        "crop_box": mask.crop_box or [0, 0, width, height],
    }


def _write_sample(project: Project, folder: Path, image: Any, masks: list[MaskRecord]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{image.sha256}{image.ext}"
    source = project.root / image.relpath
    try:  # images are immutable and content-addressed: a hard link is a safe copy
        os.link(source, target)
    except OSError:
        write_bytes_atomic(target, source.read_bytes())
    write_sa1b_json(
        folder / f"{image.sha256}.json", image_id=image.id, file_name=target.name,
        width=image.width, height=image.height,
        annotations=[_annotation(m, image.width, image.height) for m in masks],
    )  # fmt: skip


def snapshot(
    project: Project,
    *,
    stages: Iterable[int] = STAGES,
    holdout: float = HOLDOUT_FRACTION,
) -> Snapshot:
    """Freeze the accepted masks of ``stages`` into a new dataset version (module docstring),
    or return the existing version with the same content hash and stages.

    ``holdout`` is the fraction of the project's images held out (:func:`holdout_split`; the
    newest dataset version's held-out images stay held out). Images without a mask of
    ``stages`` are left out of both splits.

    Raises:
        InvalidInput: bad ``stages`` or ``holdout``, or no accepted mask of ``stages``.
    """
    stages = check_stages(stages)
    images, masks = _collect(project, stages)
    with_masks = [i.sha256 for i in images if masks[i.id]]
    if not with_masks:
        raise InvalidInput(
            f"the project has no accepted masks of stage(s) {list(stages)}: annotate some "
            "images first (or choose other --stages)"
        )
    versions = project.list_dataset_versions()
    previous = versions[-1].holdout if versions else []
    held = holdout_split(
        [i.sha256 for i in images], holdout, previous=previous, eligible=with_masks
    )
    groups: dict[str, list[tuple[Any, list[MaskRecord]]]] = {_MANUAL: [], _OTHER: [], _HOLDOUT: []}
    for image in images:
        chosen = masks[image.id]
        if not chosen:
            continue
        if image.sha256 in held:
            groups[_HOLDOUT].append((image, chosen))
            continue
        for split, keep in ((_MANUAL, True), (_OTHER, False)):
            part = [m for m in chosen if (m.source == "manual") == keep]
            if part:
                groups[split].append((image, part))
    content_hash = _content_hash(groups)
    for v in reversed(versions):
        same = v.content_hash == content_hash and tuple(v.stages) == stages
        if same and (project.root / v.path / MANIFEST_NAME).is_file():
            return open_snapshot(project, v)
    name = project.next_dataset_name()
    rel = f"{DATASETS_DIR}/{name}"
    counts = {
        split: {"images": len(items), "masks": sum(len(m) for _, m in items)}
        for split, items in groups.items()
    }
    manifest = {
        "format": _MANIFEST_FORMAT,
        "version": 1,
        "name": name,
        "content_hash": content_hash,
        "stages": list(stages),
        "holdout_fraction": holdout,
        "holdout": sorted(held),
        "counts": counts,
        "splits": {
            split: [
                {
                    "sha256": image.sha256,
                    "image_id": image.id,
                    "file_name": image.file_name,
                    "masks": [
                        {"id": m.id, "version": m.version, "source": m.source, "stage": m.stage}
                        for m in part
                    ],
                }
                for image, part in items
            ]
            for split, items in groups.items()
        },
    }
    (project.root / DATASETS_DIR).mkdir(exist_ok=True)
    with atomic_dir(project.root / rel) as tmp:
        for split, items in groups.items():
            for image, part in items:
                _write_sample(project, tmp / split, image, part)
        write_json_atomic(tmp / MANIFEST_NAME, manifest, indent=1, newline=True)
    version = project.add_dataset_version(
        name, content_hash=content_hash, path=rel, stages=list(stages), holdout=sorted(held),
        counts=counts,
    )  # fmt: skip
    return Snapshot(version, project.root / rel, manifest)
