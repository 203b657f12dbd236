"""``prefill_project``: fill a project's new images with confident proposals (data-engine
stage 2), by the automatic generator (``auto``) or by the project's box detector and SAM
(``detector``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io.image import load_image
from ..store import ImageRecord, ModelVersion, Project, file_fingerprint, local_model_file
from .settings import AUTO_DEFAULTS, DETECTOR_MIN_IOU, IMAGE_CHOICES, METHODS, MIN_SCORE

__all__ = [
    "PrefillReport",
    "model_version_for",
    "prefill_project",
]


Progress = Callable[[int, int, ImageRecord, "int | None", float], None]


@dataclass
class PrefillReport:
    """What :func:`prefill_project` did: the images prefilled now (ids), how many were
    skipped (prefilled before), the proposals stored and the wall time in seconds."""

    method: str
    prefilled: list[int] = field(default_factory=list)
    skipped: int = 0
    masks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "prefilled": list(self.prefilled),
            "skipped": self.skipped,
            "masks": self.masks,
            "seconds": self.seconds,
        }


def model_version_for(project: Project, name: str, model: Any) -> ModelVersion:
    """The project's model version of ``model`` (registered when new, without making it the
    current one): ``name`` with the fingerprint of its file when local, else the model's
    embedding fingerprint."""
    weights = local_model_file(name)
    if weights is not None:
        return project.register_model(name, file_fingerprint(weights), str(weights))
    from ...io.embedding import model_fingerprint

    return project.register_model(name, model_fingerprint(model))


def _check_score(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number in [0, 1]; got {value!r}")
    return float(value)


def prefill_project(
    project: Project,
    *,
    method: str = "detector",
    min_score: float | None = None,
    images: str = "new",
    model: str | None = None,
    device: str | None = None,
    predictor: Any = None,
    detector: str | Path | None = None,
    min_iou: float | None = None,
    auto_knobs: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> PrefillReport:
    """Propose confident masks for the project's images and store them as ``prefill``
    proposals (:meth:`Project.add_prefill`: ``stage=2``, scores, the prompt and the model
    version), one transaction per image: a re-run (or a run after a kill) skips the images
    prefilled already.

    Args:
        method: ``auto`` (the automatic generator at strict thresholds) or ``detector`` (the
            newest detector of ``DIR/detectors/``, or ``detector``; its boxes scoring at least
            ``min_score`` are SAM box prompts, whose masks are kept when SAM's predicted IoU
            is at least ``min_iou``).
        min_score: in [0, 1]; default :data:`MIN_SCORE` of the method.
        images: ``new`` (status ``new``) or ``all``.
        model: the SAM model (default: the project's); ``device`` a torch device.
        predictor: a :class:`segany.SamPredictor` to use instead of loading ``model``.
        min_iou: ``detector`` only; default :data:`DETECTOR_MIN_IOU`.
        auto_knobs: ``auto`` only: generator settings over :data:`.settings.AUTO_DEFAULTS`.
        progress: called after each image with ``(index, total, image, proposals stored or
            None when skipped, seconds)``.

    Raises ValueError for bad arguments, :class:`.detector.NoDetectorError` when
    ``detector`` has none to use.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if images not in IMAGE_CHOICES:
        raise ValueError(f"images must be one of {', '.join(IMAGE_CHOICES)}; got {images!r}")
    min_score = _check_score(MIN_SCORE[method] if min_score is None else min_score, "min_score")
    min_iou = _check_score(DETECTOR_MIN_IOU if min_iou is None else min_iou, "min_iou")
    start = time.perf_counter()
    det = None
    if method == "detector":
        from .detector import load_detector, newest_detector

        path = Path(detector) if detector is not None else newest_detector(project.root)
        det = load_detector(path, device=device)
    name = model or project.model
    if predictor is None:
        from ...build import load_model
        from ...predictor import SamPredictor

        predictor = SamPredictor(load_model(name, device=device))
    version = model_version_for(project, name, predictor.model)
    if method == "auto":
        from .auto import auto_proposals, make_auto_generator

        knobs = {**(auto_knobs or {}), "pred_iou_thresh": min_score}
        generator = make_auto_generator(predictor.model, **knobs)
        used = {**AUTO_DEFAULTS, **knobs}
        params: dict[str, Any] = {k: v for k, v in used.items() if _jsonable(v)}

        def propose(image: Any) -> list[dict[str, Any]]:
            return auto_proposals(generator, image)
    else:
        from .detector import detector_proposals

        params = {"min_score": min_score, "min_iou": min_iou, "detector": det.name}

        def propose(image: Any) -> list[dict[str, Any]]:
            return detector_proposals(det, predictor, image, min_score=min_score, min_iou=min_iou)

    report = PrefillReport(method=method)
    done = project.prefilled_image_ids()
    todo = project.list_images(status="new" if images == "new" else None)
    for i, record in enumerate(todo):
        t0 = time.perf_counter()
        stored = None
        if record.id not in done:
            proposals = propose(load_image(project.root / record.relpath))
            result = project.add_prefill(
                record.id, proposals, method=method, model_version=version, params=params
            )
            stored = None if result is None else len(result)
        if stored is None:
            report.skipped += 1
        else:
            report.prefilled.append(record.id)
            report.masks += stored
        if progress is not None:
            progress(i, len(todo), record, stored, time.perf_counter() - t0)
    report.seconds = time.perf_counter() - start
    return report


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
