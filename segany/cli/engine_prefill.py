"""The data engine's stage-2 actions of ``segany engine``: ``prefill`` (confident masks as
proposals for new images) and ``train-detector`` (the class-agnostic box detector that
``prefill --method detector`` uses). ``register(actions)`` adds them to the subparsers of
``segany engine``.

Bad usage (an unknown method, ``--min-score`` outside [0, 1], a folder that is not a
project, no detector to use, a bad device) is exit code 2; a model that cannot be loaded is 3.
Progress lines go to stderr, the result (one JSON object) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from ..precision import PRECISIONS
from .common import EXIT_OK, CliError, UsageError, bad_input, positive_int, status

__all__ = ["cmd_prefill", "cmd_train_detector", "register"]


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {text}")
    return value


def register(actions: Any) -> None:
    """Add the ``prefill`` and ``train-detector`` actions to the subparsers ``actions``."""
    from ..engine.prefill.settings import ARCHS, DETECTOR_MIN_IOU, IMAGE_CHOICES, METHODS, MIN_SCORE

    p = actions.add_parser(
        "prefill",
        help="propose confident masks for new images (stage 2, source 'prefill')",
        description=(
            "For each image (status new, or all) not prefilled before, propose confident "
            "masks and store them as source 'prefill', stage 2, for annotators to accept, edit "
            "or reject. detector: the newest box detector of DIR/detectors (see "
            "train-detector) prompts SAM with its boxes; auto: the automatic mask generator at "
            "strict thresholds. One transaction per image: a re-run or a run after a kill "
            "skips the images done."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="project folder")
    p.add_argument("--method", choices=METHODS, default="detector", help="default: detector")
    p.add_argument(
        "--min-score",
        type=_unit_float,
        default=None,
        metavar="S",
        help=(
            "in [0, 1]: detector: the least box score (default "
            f"{MIN_SCORE['detector']}); auto: the least predicted IoU (default "
            f"{MIN_SCORE['auto']})"
        ),
    )
    p.add_argument(
        "--min-iou",
        type=_unit_float,
        default=None,
        metavar="S",
        help=f"detector: the least SAM predicted IoU of a box's mask (default {DETECTOR_MIN_IOU})",
    )
    p.add_argument("--images", choices=IMAGE_CHOICES, default="new", help="default: new")
    p.add_argument("--detector", metavar="FILE", default=None, help="default: the newest")
    _model_args(p)
    p.set_defaults(func=cmd_prefill)

    p = actions.add_parser(
        "train-detector",
        help="train the box detector on the accepted masks' boxes",
        description=(
            "Train a class-agnostic Faster R-CNN (one 'object' class, no pretrained weights) "
            "on the boxes of the project's accepted manual masks, and write it atomically as "
            "DIR/detectors/detector_<n>.pt with detector_<n>.json (steps, loss curve, data "
            "size): the newest one there is what 'prefill --method detector' uses."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="project folder")
    p.add_argument("--steps", type=positive_int, default=200, help="SGD steps (default 200)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images per step (2)")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default="mobilenet_v3",
        help="mobilenet_v3 (Faster R-CNN MobileNetV3-Large 320 FPN, default) or tiny (a "
        "small CNN: seconds per step on a CPU)",
    )
    p.add_argument("--device", metavar="D", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--out", metavar="FILE", default=None, help="default: DIR/detectors/detector_<n>.pt"
    )
    p.set_defaults(func=cmd_train_detector)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="M", default=None, help="SAM model (default: the project's)")
    p.add_argument("--device", metavar="D", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="SAM's compute precision (default: auto, as for the other commands)",
    )


@contextlib.contextmanager
def _project(args: argparse.Namespace) -> Iterator[Any]:
    """The open project ``args.dir``; store errors and bad arguments are UsageError."""
    try:
        from sqlalchemy.exc import OperationalError

        from ..engine import store
    except ModuleNotFoundError as e:
        raise CliError(
            f"segany engine needs the engine extra ({e.name} is missing): "
            "pip install 'segany[engine]'"
        ) from None
    try:
        with bad_input():
            if args.device is not None:
                from ..precision import resolve_device

                resolve_device(args.device)
            with store.Project.open(args.dir) as project:
                yield project
    except store.StoreError as e:
        raise UsageError(str(e)) from e
    except OperationalError as e:
        raise UsageError(f"cannot use the database: {e.orig or e}") from e


def cmd_prefill(args: argparse.Namespace) -> int:
    """``segany engine prefill``: a progress line per image; the report as JSON on stdout."""
    from ..engine.prefill.run import prefill_project

    with _project(args) as project:
        if args.method == "detector":  # a missing detector is reported before loading SAM
            from ..engine.prefill.detector import newest_detector

            with bad_input():
                detector = args.detector or newest_detector(project.root)
        else:
            detector = None
        from ..predictor import SamPredictor
        from .common import load_model

        name = args.model or project.model
        model_args = argparse.Namespace(model=name, device=args.device, precision=args.precision)
        predictor = SamPredictor(load_model(model_args))

        def progress(i: int, n: int, image: Any, stored: int | None, seconds: float) -> None:
            what = "prefilled before, skipped" if stored is None else f"{stored} proposals"
            status(f"[{i + 1}/{n}] image {image.id} {image.file_name}: {what} ({seconds:.1f} s)")

        with bad_input():
            report = prefill_project(
                project, method=args.method, min_score=args.min_score, images=args.images,
                model=name, device=args.device, predictor=predictor, detector=detector,
                min_iou=args.min_iou, progress=progress,
            )  # fmt: skip
    status(
        f"prefilled {len(report.prefilled)} images with {report.masks} proposals "
        f"({report.skipped} skipped) in {report.seconds:.1f} s"
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_train_detector(args: argparse.Namespace) -> int:
    """``segany engine train-detector``: loss lines every 10 steps; the record as JSON."""
    from ..engine.prefill.detector import train_project_detector

    def progress(step: int, loss: float) -> None:
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == args.steps:
            status(f"step {step + 1}/{args.steps}: loss {loss:.4f}")

    with _project(args) as project, bad_input():
        path, info = train_project_detector(
            project, steps=args.steps, arch=args.arch, device=args.device, out=args.out,
            batch_size=args.batch_size, progress=progress,
        )  # fmt: skip
    status(f"wrote {path} ({info['images']} images, {info['boxes']} boxes, {info['seconds']} s)")
    summary = {k: v for k, v in info.items() if k != "losses"}
    summary.update(path=str(path), first_loss=info["losses"][0], last_loss=info["losses"][-1])
    print(json.dumps(summary))
    return EXIT_OK
