"""The automatic stage on Ray: a Ray Data pipeline that reads images in parallel tasks and runs
the generator in a pool of actors, each holding the model; results stream back, in input
order, to the driver, which writes the shards (:func:`segany.engine.stages.auto.run_auto`).

A local Ray (no address) is forced onto loopback: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
set before ``ray`` is imported and the node is started with ``_node_ip_address="127.0.0.1"``
and no dashboard, so that no Ray process listens on or connects to another address. On a
cluster (``address``), segany must be installed on every node and the input folder readable
from every node under the same path (a shared file system); the shards are written by the
driver only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .spec import GeneratorSpec, ImageResult, segment_image

__all__ = ["LOOPBACK", "default_cpus_per_worker", "ray_results", "ray_session"]

#: The only address a local Ray started here binds to.
LOOPBACK = "127.0.0.1"


def _import_ray(local: bool) -> Any:
    if local:
        # Ray reads this when it is imported: "no multi-node cluster", so that the node's
        # address resolves to loopback and not to the machine's own IP
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise ValueError(
            "running on Ray needs the 'ray' extra: pip install 'segany[ray]'"
        ) from None
    return ray


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray imported before the variable was set has read it already: set the constant it
    became for the session (a Ray internal; the tests check the sockets), then restore it."""
    from ray._private import ray_constants

    old = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address``, or start a local loopback-only Ray with
    ``num_cpus`` CPUs (default: all), yield the ``ray`` module and shut Ray down at the end.
    When Ray is already initialised (a caller's session), it is used and left running."""
    ray = _import_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    with contextlib.ExitStack() as stack:
        if address is None:
            stack.enter_context(_loopback_only())
            ray.init(
                _node_ip_address=LOOPBACK,
                include_dashboard=False,
                num_cpus=num_cpus,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        stack.callback(ray.shutdown)
        yield ray


def default_cpus_per_worker(total_cpus: float, workers: int) -> float:
    """CPUs to reserve per actor: an equal share of ``total_cpus`` less one for the read
    tasks, at most 1 and at least 0.1. With a whole CPU per actor on a 2-core machine the
    read tasks get none and the pipeline stalls; fractions keep it moving."""
    return max(0.1, min(1.0, (total_cpus - 1) / workers))


def _read(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map task: decode one image (RGB uint8) or record why it cannot be."""
    import numpy as np

    from ...io.image import load_image

    try:
        image = load_image(row["path"])
        error = ""
    except (ValueError, FileNotFoundError) as e:
        image, error = np.zeros((1, 1, 3), np.uint8), str(e)
    return {"order": row["order"], "image": image, "error": error}


class _GeneratorActor:
    """Ray Data actor: holds one generator, built from the spec when the actor starts."""

    def __init__(self, spec: GeneratorSpec) -> None:
        if spec.threads is not None:
            import torch

            torch.set_num_threads(spec.threads)
        self.generator = spec.build()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"order": [], "result": []}
        for order, image, error in zip(batch["order"], batch["image"], batch["error"], strict=True):
            res = ImageResult(error=str(error)) if error else segment_image(self.generator, image)
            out["order"].append(int(order))
            out["result"].append(json.dumps([res.width, res.height, res.annotations, res.error]))
        return out


def ray_results(
    paths: Sequence[str | os.PathLike],
    spec: GeneratorSpec,
    *,
    workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
) -> Iterator[ImageResult]:
    """Yield the :class:`ImageResult` of each of ``paths``, in order, computed on the current
    Ray session (see :func:`ray_session`): images are read by Ray Data tasks and segmented by
    an ``ActorPoolStrategy`` pool of ``workers`` actors, each building the generator from
    ``spec`` once, with ``cpus_per_worker`` CPUs (default :func:`default_cpus_per_worker`) and
    ``gpus_per_worker`` GPUs."""
    import ray

    if not paths:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    if cpus_per_worker is None:
        cpus_per_worker = default_cpus_per_worker(ray.cluster_resources().get("CPU", 1), workers)
    items = [{"order": i, "path": str(Path(p))} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * workers + 4))
    ds = ds.map(_read)
    ds = ds.map_batches(
        _GeneratorActor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )
    ds = ds.select_columns(["order", "result"])
    pending: dict[int, ImageResult] = {}
    next_order = 0
    for row in ds.iter_rows():
        width, height, annotations, error = json.loads(row["result"])
        pending[int(row["order"])] = ImageResult(width, height, annotations, error)
        while next_order in pending:  # in order, whatever order the rows arrive in
            yield pending.pop(next_order)
            next_order += 1
    if next_order != len(items):
        raise RuntimeError(f"Ray returned {next_order} of {len(items)} images")
