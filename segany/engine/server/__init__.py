"""The annotation server (FastAPI): the HTTP API over a project, the server-side decoder and
the embedding cache. Needs the ``engine`` extra (FastAPI, uvicorn, python-multipart)."""

from .app import COOKIE, create_app
from .embeddings import EmbeddingService, LogitsCache

__all__ = ["COOKIE", "EmbeddingService", "LogitsCache", "create_app"]
