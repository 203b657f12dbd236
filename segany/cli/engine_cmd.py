"""``segany engine``: the data engine's stages run over many images. ``segany engine auto`` is
the fully automatic stage: the automatic mask generator over a folder or a project, written as
SA-1B-style tar shards with an index, in-process or on Ray (see
:mod:`segany.engine.stages`). ``segany engine prefill`` and ``train-detector``
(:mod:`.engine_prefill`) are the semi-automatic stage; ``segany engine retrain``
(:mod:`.engine_retrain`) fine-tunes a project's model on its accepted masks; ``segany engine
simulate`` (:mod:`.engine_simulate`) plays the loop against ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import engine_prefill, engine_retrain, engine_simulate
from .common import EXIT_OK, EXIT_SOME_FAILED, UsageError, add_model_args, bad_input, status

#: Names of the presets (kept here so that ``--help`` imports no torch; checked in the tests
#: against :data:`segany.engine.stages.PRESETS`).
PRESET_NAMES = ("sa1b", "default")


def register(sub: Any) -> None:
    """Add ``segany engine`` (with its actions ``auto``, ``prefill``, ``train-detector``,
    ``retrain`` and ``simulate``) to the subparsers ``sub``."""
    p = sub.add_parser(
        "engine",
        help="data engine stages: auto, prefill, train-detector, retrain, simulate",
        description="Data engine stages run over many images.",
    )
    actions = p.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help=(
            "auto: the fully automatic stage; prefill, train-detector: the semi-automatic "
            "stage; retrain: fine-tune on the accepted masks; simulate: a simulated "
            "annotator that measures the loop"
        ),
    )
    a = actions.add_parser(
        "auto",
        help="segment everything in a folder or project into SA-1B-style tar shards",
        description=(
            "Run the automatic mask generator over every image of INPUT (a folder, searched "
            "recursively, or a project folder) and write OUT/sa_000000.tar, ... (each image and "
            "its SA-1B JSON with COCO RLE masks) plus OUT/index.json and OUT/report.json. "
            "Re-running skips images already in finished shards; a shard interrupted mid-write "
            "is redone. In-process by default; on Ray with --workers or --ray-address, with the "
            "same output."
        ),
    )
    a.add_argument("input", help="a folder of images or a project folder")
    a.add_argument("--out", required=True, help="output folder (created; resumed if it exists)")
    a.add_argument(
        "--preset",
        default="sa1b",
        metavar="{sa1b,default}",
        help="generator settings: sa1b (the SAM paper's stage 3: 32x32 grid plus 2x2 and 4x4 "
        "crops, IoU >= 0.88, stability >= 0.95, masks >= 95%% of the image dropped, regions "
        "< 100 px cleaned) or default (the generator's defaults) (default: %(default)s)",
    )
    a.add_argument(
        "--points-per-side",
        type=int,
        metavar="N",
        help="override the preset's grid (points per side)",
    )
    a.add_argument(
        "--shard-size",
        type=int,
        default=100,
        metavar="K",
        help="images per shard (default: %(default)s)",
    )
    a.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run on the Ray cluster at ADDR (e.g. ray://head:10001 or auto)",
    )
    a.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run on Ray with N generator actors (a local loopback Ray unless --ray-address)",
    )
    a.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per actor (default: 0)",
    )
    a.add_argument(
        "--cpus-per-worker",
        type=float,
        metavar="C",
        help="CPUs reserved per actor (default: a share that leaves one for reading images)",
    )
    a.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch threads per generator (default: torch's in-process, the actor's CPU share "
        "on Ray); the output is bit-identical in-process and on Ray for the same value",
    )
    a.add_argument(
        "--into-project",
        metavar="DIR",
        help="afterwards, import the shards into the project DIR as source=auto, stage 3 masks",
    )
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(a)
    a.set_defaults(func=cmd_engine_auto)
    engine_prefill.register(actions)
    engine_retrain.register(actions)
    engine_simulate.register(actions)


def cmd_engine_auto(args: argparse.Namespace) -> int:
    """``segany engine auto``: exit code 0, 2 on bad input, 4 when some images could not be
    read (the others are done; a re-run retries them)."""
    if args.preset not in PRESET_NAMES:
        raise UsageError(f"--preset must be one of {', '.join(PRESET_NAMES)}; got {args.preset!r}")
    if args.shard_size <= 0:
        raise UsageError(f"--shard-size must be a positive number of images; got {args.shard_size}")
    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive; got {args.workers}")
    if args.points_per_side is not None and args.points_per_side <= 0:
        raise UsageError(f"--points-per-side must be positive; got {args.points_per_side}")
    on_ray = args.workers is not None or args.ray_address is not None
    if args.gpus_per_worker < 0 or (args.gpus_per_worker and not on_ray):
        raise UsageError(
            "--gpus-per-worker takes a number >= 0 and needs --workers or --ray-address"
        )
    if args.cpus_per_worker is not None and (args.cpus_per_worker <= 0 or not on_ray):
        raise UsageError(
            "--cpus-per-worker takes a number > 0 and needs --workers or --ray-address"
        )
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads must be positive; got {args.threads}")
    source = Path(args.input)
    if not source.is_dir():
        raise UsageError(f"INPUT {source} is not a folder (give a folder of images or a project)")
    if args.into_project:
        _open_project(args.into_project).close()  # before the run: fail early
    from ..engine.stages import PRESETS, GeneratorSpec, import_shards, run_auto

    overrides = {} if args.points_per_side is None else {"points_per_side": args.points_per_side}
    spec = GeneratorSpec.from_preset(
        PRESETS[args.preset], model=args.model, device=args.device, precision=args.precision,
        threads=args.threads, **overrides,
    )  # fmt: skip
    with bad_input():
        report = run_auto(
            source, args.out, spec=spec, shard_size=args.shard_size, workers=args.workers,
            ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker, progress=not args.quiet,
        )  # fmt: skip
    status(
        f"{report['done']} image(s) done, {report['skipped']} skipped, {report['masks']} masks, "
        f"{report['images_per_hour']} images/hour, {report['shards']} shard(s) in {args.out}"
    )
    if args.into_project:
        with _open_project(args.into_project) as project, bad_input():
            imported = import_shards(project, args.out)
        status(
            f"imported into {args.into_project}: {imported['masks_added']} masks added "
            f"({imported['masks_existing']} already there), {imported['images_added']} images "
            "added"
        )
    return EXIT_SOME_FAILED if report["failed"] else EXIT_OK


def _open_project(path: str) -> Any:
    """The project at ``path``; not a project (or a damaged one) is bad usage."""
    from ..engine.store import Project, StoreError

    try:
        return Project.open(path)
    except StoreError as e:
        raise UsageError(str(e)) from e
