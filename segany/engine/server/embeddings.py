"""The server's model: one :class:`segany.SamPredictor` on a model thread of its own, an
on-disk embedding cache keyed by (image sha256, model fingerprint), a background encoder
thread, and a bounded LRU of low-res logits that ``predict`` answers refer to by token.

All of the server's torch work (loading the model, encoding, decoding, the ONNX export) runs on
that one thread (:meth:`EmbeddingService.call`). PyTorch's OpenMP gives every thread that runs
a parallel operation a thread team of its own, and once two threads have teams every
operation runs about twice as slow on a small CPU (a decoder call of the bundled model: ~10 ms
on one thread, ~21 ms after a second thread ran a matrix product), so handing the work to
whichever request thread is free would double the click latency.

Cache files are ``<embeddings_dir>/<sha256>_<fingerprint>.safetensors``
(:func:`segany.engine.store.cachefiles.cache_file_name`), written atomically by
:meth:`SamPredictor.save_embedding` (the one embedding codec, :mod:`segany.io.embedding`). A
new model has a new fingerprint, so its embeddings are computed afresh by themselves.
:func:`register_served_model` makes the served model the project's current model version and
records its fingerprint, so that ``segany project stats`` counts the cached images without
loading the model.
"""

from __future__ import annotations

import queue
import secrets
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ...io.embedding import decoder_fingerprint, load_embedding_file, model_fingerprint
from ...io.image import load_image
from ..store import ModelVersion, Project, file_fingerprint, local_model_file
from ..store.cachefiles import cache_file_name

__all__ = ["EmbeddingService", "LogitsCache", "register_served_model"]

T = TypeVar("T")


def register_served_model(project: Project, name: str, model: Any) -> ModelVersion:
    """Make the model that a server serves the project's current model version, so that every
    mask records the version it was made with: ``name`` (the ``--model`` value) with
    :func:`~segany.engine.store.file_fingerprint` of its file when it is local (a path or the
    bundled model), else the model's embedding fingerprint. The same model again reuses its
    version. Records the embedding fingerprint
    (:meth:`~segany.engine.store.Project.record_embedding_fingerprint`)."""
    embedding = model_fingerprint(model)
    weights = local_model_file(name)
    if weights is None:
        version = project.use_model(name, embedding, None)
    else:
        version = project.use_model(name, file_fingerprint(weights), str(weights))
    project.record_embedding_fingerprint(embedding, version)
    return version


class LogitsCache:
    """A bounded, thread-safe LRU of ``token -> (image_id, logits (1, 256, 256) float32)``."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image_id: int, logits: np.ndarray) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (image_id, np.asarray(logits, np.float32))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> tuple[int, np.ndarray] | None:
        with self._lock:
            item = self._items.get(token)
            if item is not None:
                self._items.move_to_end(token)
            return item


class EmbeddingService:
    """The predictor (created on first use by ``predictor_factory``, on the model thread), the
    model thread that runs every use of it (:meth:`call`) and the cache.

    Args:
        embeddings_dir: the cache folder (a project's ``embeddings_dir``).
        predictor_factory: returns a :class:`segany.SamPredictor`.
        image_path: ``(image_id) -> (sha256, path of the image file)``.
        queue_size: the background queue's bound (images past it are encoded on demand).
    """

    def __init__(
        self,
        embeddings_dir: Path,
        predictor_factory: Callable[[], Any],
        image_path: Callable[[int], tuple[str, Path]],
        queue_size: int = 256,
    ) -> None:
        self.dir = Path(embeddings_dir)
        self._factory = predictor_factory
        self._image_path = image_path
        self._predictor: Any = None
        self._fingerprint: str | None = None
        self._model_thread: ThreadPoolExecutor | None = None
        self._model_ident: int | None = None
        self._model_lock = threading.Lock()
        self._loaded: str | None = None  # cache key of the image set in the predictor
        self._queue: queue.Queue[int | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.encoded = 0  # images encoded (not loaded from the cache) by this service
        self.encoding: int | None = None  # the image being encoded now
        self._pending: set[int] = set()  # queued for the background encoder
        self._pending_lock = threading.Lock()
        self.logits = LogitsCache()

    # ------------------------------------------------------------------ model

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the model thread and return its result (or raise its
        exception). Calls run one at a time, in order; a call from the model thread itself runs
        at once. Everything that touches the predictor goes through here."""
        if threading.get_ident() == self._model_ident:
            return fn(*args, **kwargs)
        with self._model_lock:
            if self._model_thread is None:
                self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="segany-model")
                # a service dropped without stop()/close() still ends its thread
                weakref.finalize(self, self._model_thread.shutdown, wait=False)
            future = self._model_thread.submit(self._on_model_thread, fn, args, kwargs)
        return future.result()

    def close(self) -> None:
        """End the model thread (after the calls queued on it); a later :meth:`call` starts a
        new one. :meth:`stop` closes it too."""
        with self._model_lock:
            executor, self._model_thread = self._model_thread, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _on_model_thread(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        self._model_ident = threading.get_ident()
        return fn(*args, **kwargs)

    @property
    def predictor(self) -> Any:
        """The predictor (created on first use, on the model thread). Use it inside
        :meth:`call`."""
        return self.call(self._get_predictor)

    def _get_predictor(self) -> Any:
        if self._predictor is None:
            self._predictor = self._factory()
            self._fingerprint = model_fingerprint(self._predictor.model)
        return self._predictor

    @property
    def loaded_fingerprint(self) -> str | None:
        """The model's fingerprint if the model is loaded, else None (loads nothing)."""
        return self._fingerprint

    @property
    def fingerprint(self) -> str:
        """:func:`segany.io.embedding.model_fingerprint` of the model."""
        self.predictor  # noqa: B018 - creates it
        assert self._fingerprint is not None
        return self._fingerprint

    def cache_path(self, sha256: str) -> Path:
        """The cache file of an image (by content) for this model."""
        return self.dir / cache_file_name(sha256, self.fingerprint)

    def ensure(self, image_id: int) -> Path:
        """Encode the image unless its embedding is cached; returns the cache file."""
        return self.call(self._ensure, image_id)

    def _ensure(self, image_id: int) -> Path:
        sha, path = self._image_path(image_id)
        cached = self.cache_path(sha)
        if not cached.is_file():
            self.encoding = image_id
            try:
                predictor = self.predictor
                predictor.set_image(load_image(path))
                self.dir.mkdir(parents=True, exist_ok=True)
                predictor.save_embedding(cached)
            finally:
                self.encoding = None
            self._loaded = cached.name
            self.encoded += 1
        return cached

    def set_image(self, image_id: int) -> Any:
        """Make the image current in the predictor (from the cache when there; the encoder
        only when not) and return the predictor. Call inside :meth:`call`, which also runs the
        predictor's use of it: ``service.call(lambda: service.set_image(i).predict(...))``."""
        if threading.get_ident() != self._model_ident:
            raise RuntimeError("EmbeddingService.set_image runs on the model thread: use call()")
        cached = self.ensure(image_id)
        predictor = self.predictor
        if self._loaded != cached.name:
            try:
                predictor.load_embedding(cached)
            except ValueError:  # a damaged cache file: encode the image again
                cached.unlink(missing_ok=True)
                self._loaded = None
                self.ensure(image_id)
            self._loaded = cached.name
        return predictor

    def embedding(self, image_id: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """``(features (1, C, He, We) as stored, original_size (H, W), input_size (h, w))``."""
        rec = load_embedding_file(self.ensure(image_id))
        return rec.features, rec.original_size, rec.input_size

    def decoder_dir(self) -> Path:
        """The folder with segany's ONNX export of the model's prompt decoder
        (``decoder.onnx``, ``manifest.json``), exported on first use into
        ``<embeddings_dir>/onnx_<fingerprint>_<decoder fingerprint>/`` (a decoder-only
        fine-tune keeps the embeddings and gets its own decoder,
        :func:`segany.io.embedding.decoder_fingerprint`)."""
        return self.call(self._decoder_dir)

    def _decoder_dir(self) -> Path:
        from ...export import export_onnx
        from ...io.files import atomic_dir

        decoder = decoder_fingerprint(self.predictor.model)
        out = self.dir / f"onnx_{self.fingerprint}_{decoder}"
        if not (out / "manifest.json").is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_dir(out) as tmp:
                export_onnx(self.predictor.model, tmp, encoder=False)
        return out

    def is_cached(self, image_id: int) -> bool:
        sha, _ = self._image_path(image_id)
        return self.cache_path(sha).is_file()

    # ------------------------------------------------------------------ background worker

    def enqueue(self, image_id: int) -> bool:
        """Queue an image for the background encoder (once: an image already queued is not
        queued again); False when the queue is full."""
        with self._pending_lock:
            if image_id in self._pending:
                return True
            try:
                self._queue.put_nowait(image_id)
            except queue.Full:
                return False
            self._pending.add(image_id)
        return True

    @property
    def queued(self) -> int:
        """Images waiting for the background encoder (the one being encoded not counted)."""
        with self._pending_lock:
            return len(self._pending)

    def progress(self, project: Project) -> dict[str, Any]:
        """The queue's progress: ``{"images", "cached", "queued", "encoding", "fingerprint",
        "encoded"}``: the project's images, how many have a cache file for the model's
        fingerprint (the loaded model's, else the one recorded for the current model version;
        ``cached`` and ``fingerprint`` None when neither is known), the images queued, the
        id of the image being encoded (or None) and the images this service has encoded.
        Loads no model."""
        out = project.embedding_progress(self.loaded_fingerprint)
        return {
            "images": out["images"],
            "cached": out["cached"],
            "queued": self.queued,
            "encoding": self.encoding,
            "fingerprint": out["fingerprint"],
            "encoded": self.encoded,
        }

    def start(self) -> None:
        """Start the background encoder thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="segany-embeddings", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after the image it is encoding (queued images are dropped) and end
        the model thread."""
        if self._thread is None:
            self.close()
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._pending_lock:
            self._pending.clear()
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        self.close()

    def _run(self) -> None:
        while True:
            image_id = self._queue.get()
            if image_id is None:
                return
            with self._pending_lock:
                self._pending.discard(image_id)
            try:
                self.ensure(image_id)
            except Exception:  # noqa: BLE001 - a bad image must not stop the worker
                continue
