"""The fully automatic stage of the data engine: the automatic mask generator over a folder of
images (or a project's images), written as SA-1B-style tar shards with an index
(:mod:`.shards`), in-process or on Ray (:mod:`.ray_run`) with identical output.

    from segany.engine.stages import GeneratorSpec, PRESETS, run_auto

    spec = GeneratorSpec.from_preset(PRESETS["sa1b"], model="segany_tiny")
    report = run_auto("photos/", "shards/", spec=spec, shard_size=100)          # in-process
    report = run_auto("photos/", "shards/", spec=spec, workers=2)               # local Ray

Both paths run :func:`segment_image` on each image; the driver writes the shards, in input
order, so the bytes do not depend on where the masks were computed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io.files import is_image_file, write_json_atomic
from .shards import INDEX_FILE, ShardImage, ShardIndex, extract_shard, write_shard
from .spec import (
    PRESETS,
    AutoPreset,
    GeneratorSpec,
    ImageResult,
    read_and_segment,
    segment_image,
    torch_threads,
)

__all__ = [
    "PRESETS",
    "REPORT_FILE",
    "AutoPreset",
    "GeneratorSpec",
    "ImageResult",
    "InputImage",
    "import_shards",
    "list_inputs",
    "read_and_segment",
    "run_auto",
    "segment_image",
]

#: The throughput report written at the end of a run.
REPORT_FILE = "report.json"
_PROJECT_FILE = "project.json"  # a project folder's marker (see segany.engine.store)


@dataclass(frozen=True)
class InputImage:
    """An input image: ``name`` (its path relative to the input folder, POSIX) and ``path``."""

    name: str
    path: Path


def list_inputs(source: str | os.PathLike) -> list[InputImage]:
    """The images of ``source``, sorted by name: every file with one of
    :data:`segany.io.files.IMAGE_SUFFIXES` under the folder (recursively; hidden files
    skipped), or the images of a project folder (``DIR/images``). Raises ValueError when
    ``source`` is not a folder or holds no images."""
    root = Path(source)
    if not root.is_dir():
        raise ValueError(f"input {root} is not a folder (give a folder of images or a project)")
    if (root / _PROJECT_FILE).is_file():
        root = root / "images"
    images = [
        InputImage(p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not images:
        raise ValueError(f"no image files in {Path(source)}")
    return sorted(images, key=lambda im: im.name)


def _in_process(spec: GeneratorSpec, todo: list[InputImage]) -> Iterator[ImageResult]:
    if not todo:
        return
    with torch_threads(spec.threads):
        generator = spec.build()
        for im in todo:
            yield read_and_segment(generator, im.path)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_auto(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    spec: GeneratorSpec,
    shard_size: int = 100,
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    progress: bool = True,
    results: Iterable[ImageResult] | None = None,
) -> dict[str, Any]:
    """Segment every image of ``source`` (see :func:`list_inputs`) not yet in ``out``'s
    finished shards and write the rest as shards of ``shard_size`` images (see
    :mod:`.shards`), then ``out/report.json``.

    Runs in-process unless ``workers`` or ``ray_address`` is given; then on Ray (a local,
    loopback-only Ray when ``ray_address`` is None) with ``workers`` actors (default 1), each
    holding the model, with ``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs (default: a
    share of the node's CPUs, leaving room for the read tasks). The output is the same either
    way. ``results`` (for tests) replaces the generator: one ImageResult per image to do.

    Returns the report (also printed as one JSON line and written to ``report.json``):
    ``images`` (in the input), ``done`` (this run), ``skipped`` (already in shards),
    ``failed`` (unreadable, not stored; retried by the next run), ``masks`` (this run),
    ``shards`` (finished, in all), ``seconds``, ``images_per_hour``, ``masks_per_image``,
    ``mode`` and ``workers``. Raises ValueError on bad arguments or an ``out`` of other
    settings.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard size must be a positive integer; got {shard_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    if gpus_per_worker < 0:
        raise ValueError(f"gpus per worker must be >= 0; got {gpus_per_worker!r}")
    use_ray = workers is not None or ray_address is not None
    images = list_inputs(source)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    index = ShardIndex.open(out, {**spec.identity(), "shard_size": shard_size})
    for note in index.notes:
        _status(note)
    done = index.done_names()
    todo = [im for im in images if im.name not in done]
    if len(images) > len(todo):
        _status(f"skipping {len(images) - len(todo)} image(s) already in {out}'s shards")
    start = time.perf_counter()
    mode = "ray" if use_ray else "in-process"
    stats = {"done": 0, "masks": 0, "failed": []}
    if results is not None:
        _write_all(index, todo, results, shard_size, stats, progress)
    elif use_ray and todo:
        from .ray_run import ray_results, ray_session

        with ray_session(ray_address):
            stream = ray_results(
                [im.path for im in todo], spec, workers=workers or 1,
                gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
            )  # fmt: skip
            with contextlib.closing(stream):  # the Ray iterator ends before Ray does
                _write_all(index, todo, stream, shard_size, stats, progress)
    else:
        stream = _in_process(spec, todo)
        with contextlib.closing(stream):  # torch threads restored even on an error
            _write_all(index, todo, stream, shard_size, stats, progress)
    seconds = time.perf_counter() - start
    report = {
        "images": len(images),
        "done": stats["done"],
        "skipped": len(images) - len(todo),
        "failed": stats["failed"],
        "masks": stats["masks"],
        "shards": len(index.shards),
        "seconds": round(seconds, 3),
        "images_per_hour": round(stats["done"] * 3600 / seconds, 1) if seconds > 0 else None,
        "masks_per_image": round(stats["masks"] / stats["done"], 2) if stats["done"] else None,
        "mode": mode,
        "workers": (workers or 1) if use_ray else 1,
        "preset": spec.preset,
    }
    write_json_atomic(out / REPORT_FILE, report, indent=1, newline=True)
    print(json.dumps(report), flush=True)
    return report


def _write_all(
    index: ShardIndex,
    todo: list[InputImage],
    stream: Iterable[ImageResult],
    shard_size: int,
    stats: dict[str, Any],
    progress: bool,
) -> None:
    """Take the results of ``todo`` in order and write a shard per ``shard_size`` images."""
    from tqdm import tqdm

    first_id = index.next_image_id
    bar = tqdm(
        total=len(todo), desc="segany engine auto", unit="image", file=sys.stderr,
        disable=not progress or None, smoothing=0.1,
    )  # fmt: skip
    results = iter(stream)
    try:
        for c, chunk in enumerate(_chunks(todo, shard_size)):
            shard = []
            for k, im in enumerate(chunk):
                res = next(results)
                bar.update(1)
                if res.error is not None:
                    stats["failed"].append(im.name)
                    print(f"segany: error: {res.error}; skipping", file=sys.stderr)
                    continue
                anns = json.loads(res.annotations)
                image_id = first_id + c * shard_size + k
                shard.append(ShardImage(image_id, im.name, im.path, res.width, res.height, anns))
                stats["done"] += 1
                stats["masks"] += len(anns)
            if shard:
                index.add(write_shard(index.out, index.next_shard, shard))
            bar.set_postfix(masks=stats["masks"], shards=len(index.shards), refresh=False)
    finally:
        bar.close()


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def import_shards(
    project: Any, out: str | os.PathLike, *, source: str = "auto", stage: int = 3
) -> dict[str, int]:
    """Import every finished shard of ``out`` into ``project`` (a
    :class:`segany.engine.store.Project`) as masks of ``source`` and ``stage`` (the fully
    automatic stage's by default), through :meth:`Project.import_` (images added by content;
    a mask the image already has is not added again). Returns the summed import report."""
    import tempfile

    out = Path(out)
    if not (out / INDEX_FILE).is_file():
        raise ValueError(f"{out} has no {INDEX_FILE}: not the output of 'segany engine auto'")
    index = json.loads((out / INDEX_FILE).read_text(encoding="utf-8"))
    total = {"images_added": 0, "images_existing": 0, "masks_added": 0, "masks_existing": 0}
    for entry in index["shards"]:
        with tempfile.TemporaryDirectory(prefix=".import-", suffix=".tmp", dir=out) as tmp:
            extract_shard(out / entry["file"], tmp)
            report = project.import_(tmp, source=source, stage=stage)
        for key in total:
            total[key] += report[key]
    return total
