"""The server's model: one :class:`segany.SamPredictor` behind a lock, an on-disk embedding
cache keyed by (image sha256, model fingerprint), a background encoder thread, and a bounded
LRU of low-res logits that ``predict`` answers refer to by token.

Cache files are ``<embeddings_dir>/<sha256>_<fingerprint>.safetensors``, written atomically by
:meth:`SamPredictor.save_embedding` (the one embedding codec, :mod:`segany.io.embedding`). A
new model has a new fingerprint, so its embeddings are computed afresh by themselves.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...io.embedding import load_embedding_file, model_fingerprint
from ...io.image import load_image

__all__ = ["EmbeddingService", "LogitsCache"]


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
    """The predictor (created on first use by ``predictor_factory``), its lock and the cache.

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
        self.lock = threading.RLock()
        self._loaded: str | None = None  # cache key of the image set in the predictor
        self._queue: queue.Queue[int | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.encoded = 0  # images encoded (not loaded from the cache) by this service
        self.logits = LogitsCache()

    # ------------------------------------------------------------------ model

    @property
    def predictor(self) -> Any:
        with self.lock:
            if self._predictor is None:
                self._predictor = self._factory()
                self._fingerprint = model_fingerprint(self._predictor.model)
            return self._predictor

    @property
    def fingerprint(self) -> str:
        """:func:`segany.io.embedding.model_fingerprint` of the model."""
        self.predictor  # noqa: B018 - creates it
        assert self._fingerprint is not None
        return self._fingerprint

    def cache_path(self, sha256: str) -> Path:
        """The cache file of an image (by content) for this model."""
        return self.dir / f"{sha256}_{self.fingerprint}.safetensors"

    def ensure(self, image_id: int) -> Path:
        """Encode the image unless its embedding is cached; returns the cache file."""
        sha, path = self._image_path(image_id)
        with self.lock:
            cached = self.cache_path(sha)
            if not cached.is_file():
                predictor = self.predictor
                predictor.set_image(load_image(path))
                self.dir.mkdir(parents=True, exist_ok=True)
                predictor.save_embedding(cached)
                self._loaded = cached.name
                self.encoded += 1
            return cached

    def set_image(self, image_id: int) -> Any:
        """Make the image current in the predictor (from the cache when there; the encoder
        only when not) and return the predictor. Call with :attr:`lock` held."""
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
        ``<embeddings_dir>/onnx_<fingerprint>/``."""
        from ...export import export_onnx
        from ...io.files import atomic_dir

        with self.lock:
            out = self.dir / f"onnx_{self.fingerprint}"
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
        """Queue an image for the background encoder; False when the queue is full."""
        try:
            self._queue.put_nowait(image_id)
        except queue.Full:
            return False
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the background encoder thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="segany-embeddings", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after the image it is encoding (queued images are dropped)."""
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            image_id = self._queue.get()
            if image_id is None:
                return
            try:
                self.ensure(image_id)
            except Exception:  # noqa: BLE001 - a bad image must not stop the worker
                continue
