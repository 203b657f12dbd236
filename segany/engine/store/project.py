"""A segany annotation project: a folder of content-addressed images and a database.

Layout of a project folder ``DIR``::

    DIR/project.json                          format version, model, database URL (no password)
    DIR/segany.db                             the embedded SQLite database (unless --db URL)
    DIR/images/<sha256[:2]>/<sha256><ext>     the images, by content (one file per content)
    DIR/embeddings/<sha256>_<fingerprint>.safetensors   the server's embedding cache

Every public method of :class:`Project` is one database transaction, and every file is written
to a temporary name and renamed (:mod:`segany.io.files`). The methods return plain records
(:mod:`.records`) and raise the errors of :mod:`.errors`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from ...io.files import is_image_file, sha256_file, write_bytes_atomic, write_json_atomic
from . import checks
from .base import AnnotatorRef, token_hash
from .cachefiles import count_cached, remove_stray_temp_files
from .datasets import DatasetMethods
from .db import parse_db_url, public_url, sqlite_url
from .errors import InvalidInput, NotFound, StoreError
from .exchange import export_project, import_into
from .masks import MaskMethods
from .media import clean_file_name, decode_image
from .models import AnnotatorRow, ImageRow, MaskRow, ModelVersionRow
from .proposals import ProposalMethods
from .records import AddReport, Annotator, DatasetVersion, ImageRecord, ModelVersion

__all__ = [
    "DB_ENV",
    "PROJECT_FILE",
    "PROJECT_FORMAT",
    "SQLITE_FILE",
    "Project",
    "file_fingerprint",
    "local_model_file",
]

#: The project file's name and format version.
PROJECT_FILE = "project.json"
PROJECT_FORMAT = 1
#: The embedded database's file name.
SQLITE_FILE = "segany.db"
#: ``project.json`` keys: the current model version's fingerprint (:meth:`Project.use_model`)
#: and the embedding fingerprint per model version fingerprint.
_CURRENT_KEY = "model_version"
_EMBEDDINGS_KEY = "embedding_fingerprints"
#: Environment variable with the database URL (password included) of a project whose
#: ``project.json`` names an external database.
DB_ENV = "SEGANY_DB_URL"


def file_fingerprint(path: str | os.PathLike) -> str:
    """A model file's fingerprint: ``"sha256:<hex>"`` of its bytes."""
    return "sha256:" + sha256_file(path)


def local_model_file(name: str) -> Path | None:
    """The weights file of a ``--model`` value when it is local: a path, or the bundled
    model's file; None for other names (a variant downloaded by name)."""
    if Path(name).is_file():
        return Path(name).resolve()
    bundled = Path(__file__).resolve().parents[2] / "models" / f"{name}.safetensors"
    return bundled if bundled.is_file() else None


class Project(DatasetMethods, MaskMethods, ProposalMethods):
    """An open project (use :meth:`init` or :meth:`open`; close it, or use ``with``).

    ``clock`` (a function returning an aware UTC datetime) replaces the wall clock for
    timestamps and lease expiry, for tests.
    """

    #: The temporary files of killed writers that :meth:`open` removed from ``images/`` and
    #: ``embeddings/`` (see :func:`.cachefiles.remove_stray_temp_files`).
    removed_temp_files: tuple[Path, ...] = ()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls,
        root: str | os.PathLike,
        *,
        model: str = "segany_tiny",
        db_url: str | URL | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> Project:
        """Create a project in the folder ``root`` (created if missing; it must not be a
        project already) with the database at ``db_url`` (default: the embedded SQLite file
        ``root/segany.db``) migrated to the newest schema. ``model`` is the project's model
        (a variant name or checkpoint path); when it is a local file (the bundled model or a
        path) it is registered as the first model version."""
        root = Path(root)
        if (root / PROJECT_FILE).exists():
            raise InvalidInput(f"{root} is already a segany project (it has {PROJECT_FILE})")
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"{root} exists and is not a folder")
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"model must be a variant name or a checkpoint path; got {model!r}")
        url = parse_db_url(db_url) if db_url is not None else None
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "format": "segany-project",
            "version": PROJECT_FORMAT,
            "model": model,
            "db": None if url is None else public_url(url),
        }
        project = cls(root, url or sqlite_url(root / SQLITE_FILE), config, clock)
        try:
            for sub in ("images", "embeddings"):
                (root / sub).mkdir(exist_ok=True)
            weights = local_model_file(model)
            if weights is not None:
                project.register_model(model, file_fingerprint(weights), str(weights))
            write_json_atomic(root / PROJECT_FILE, config, indent=2, newline=True)
        except BaseException:
            project.close()
            raise
        return project

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        *,
        db_url: str | URL | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> Project:
        """Open the project in ``root``, upgrading an older database in place. A project on an
        external database connects with ``db_url``, else ``$SEGANY_DB_URL``, else the URL in
        ``project.json`` (which has no password: libpq's ``PGPASSWORD`` / ``.pgpass`` apply);
        a given URL must name the same server and database."""
        root = Path(root)
        path = root / PROJECT_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(
                f"{root} is not a segany project (no {PROJECT_FILE}); create one with "
                "'segany project init DIR'"
            ) from None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {path}: {e}") from None
        if not isinstance(config, dict) or config.get("format") != "segany-project":
            raise StoreError(f"{path} is not a segany project file")
        if not isinstance(config.get("version"), int) or config["version"] > PROJECT_FORMAT:
            raise StoreError(
                f"{path} has format version {config.get('version')!r}; this segany reads "
                f"versions up to {PROJECT_FORMAT}: upgrade segany"
            )
        stored = config.get("db")
        if stored is None:
            if db_url is not None:
                raise InvalidInput(
                    f"{root} uses its embedded SQLite database; open it without a database URL"
                )
            url = sqlite_url(root / SQLITE_FILE)
        else:
            given = db_url if db_url is not None else os.environ.get(DB_ENV) or None
            url = parse_db_url(given if given is not None else stored)
            want = parse_db_url(stored)
            if (url.host, url.port, url.database) != (want.host, want.port, want.database):
                raise InvalidInput(
                    f"the database URL {public_url(url)} is not this project's ({stored})"
                )
        project = cls(root, url, config, clock)
        project.removed_temp_files = tuple(
            remove_stray_temp_files([project.images_dir, project.embeddings_dir])
        )
        return project

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def embeddings_dir(self) -> Path:
        """The server's embedding cache (:mod:`.cachefiles`)."""
        return self.root / "embeddings"

    @property
    def model(self) -> str:
        """The project's model (``project.json``: a variant name or checkpoint path)."""
        return str(self.config.get("model") or "segany_tiny")

    @property
    def db_url(self) -> str:
        """The database URL without password."""
        return public_url(self.engine.url)

    # ------------------------------------------------------------------ images

    def add_image_bytes(self, data: bytes, file_name: str) -> tuple[ImageRecord, bool]:
        """Add an image from its bytes; ``file_name`` is kept as metadata (folders stripped).
        Returns the record and whether it was new: the same content added again is the same
        image (its first file name kept). Raises InvalidInput, adding nothing, for a bad name
        or bytes that are not a complete image within the decompression-bomb limit."""
        name = clean_file_name(file_name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"image data must be bytes; got {type(data).__name__}")
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        with self._tx() as s:
            row = s.scalar(select(ImageRow).where(ImageRow.sha256 == sha))
            if row is not None:
                return self._image_record(s, row), False
        decoded = decode_image(data, repr(name))
        folder = self.images_dir / sha[:2]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sha}{decoded.ext}"
        if not path.exists():
            write_bytes_atomic(path, data)
        try:
            with self._tx() as s:
                row = ImageRow(
                    sha256=sha,
                    file_name=name,
                    ext=decoded.ext,
                    width=decoded.width,
                    height=decoded.height,
                    status="new",
                    created_at=self._clock(),
                )
                s.add(row)
                s.flush()
                return self._image_record(s, row, 0), True
        except IntegrityError:  # added concurrently by another writer
            with self._tx() as s:
                row = s.scalar(select(ImageRow).where(ImageRow.sha256 == sha))
                if row is None:
                    raise
                return self._image_record(s, row), False

    def add_image_file(
        self, path: str | os.PathLike, file_name: str | None = None
    ) -> tuple[ImageRecord, bool]:
        """Add the image file ``path`` (its name as metadata unless ``file_name``); see
        :meth:`add_image_bytes`."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InvalidInput(f"{path} is a folder; give an image file") from None
        except OSError as e:
            raise InvalidInput(f"cannot read {path}: {e.strerror or e}") from None
        return self.add_image_bytes(data, path.name if file_name is None else file_name)

    def add_paths(self, paths: Iterable[str | os.PathLike]) -> AddReport:
        """Add image files and folders (searched recursively, in sorted order; a folder's
        files without an image suffix and hidden files are skipped). Files that are not valid
        images are skipped with their reason, not raised."""
        report = AddReport()
        for p in paths:
            p = Path(p)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                if p.is_dir():
                    if any(part.startswith(".") for part in f.relative_to(p).parts):
                        continue
                    if not is_image_file(f):
                        report.skipped.append((str(f), "not an image file suffix"))
                        continue
                try:
                    record, created = self.add_image_file(f)
                except InvalidInput as e:
                    report.skipped.append((str(f), str(e)))
                    continue
                (report.added if created else report.existing).append(record)
        return report

    def list_images(self, status: str | None = None) -> list[ImageRecord]:
        """The images in id order (only those with ``status`` if given), with mask counts."""
        counts = (
            select(MaskRow.image_id, func.count().label("n")).group_by(MaskRow.image_id).subquery()
        )
        query = select(ImageRow, counts.c.n).outerjoin(counts, counts.c.image_id == ImageRow.id)
        if status is not None:
            query = query.where(ImageRow.status == checks.check_status(status))
        with self._tx() as s:
            rows = s.execute(query.order_by(ImageRow.id)).all()
            return [self._image_record(s, row, n or 0) for row, n in rows]

    def get_image(self, image_id: int) -> ImageRecord:
        """The image ``image_id`` (NotFound if none)."""
        with self._tx() as s:
            return self._image_record(s, self._image_row(s, image_id))

    def image_file(self, image_id: int) -> Path:
        """The path of the image's file in the project folder."""
        return self.root / self.get_image(image_id).relpath

    def set_status(
        self, image_id: int, status: str, *, annotator: AnnotatorRef = None
    ) -> ImageRecord:
        """Set an image's status (``new``, ``in_progress``, ``done``, ``skipped``); records a
        ``status`` event."""
        status = checks.check_status(status)
        with self._tx() as s:
            row = self._image_row(s, image_id)
            aid = self._annotator_id(s, annotator)
            old, row.status = row.status, status
            self._event(
                s, "status", image_id=row.id, annotator_id=aid, stage=1,
                payload={"from": old, "to": status},
            )  # fmt: skip
            s.flush()
            return self._image_record(s, row)

    # ------------------------------------------------------------------ leases

    def lease_image(self, image_id: int, annotator: AnnotatorRef, ttl_s: float) -> ImageRecord:
        """Lease the image to ``annotator`` for ``ttl_s`` seconds (renewing their own lease; a
        ``new`` image becomes ``in_progress``). Raises LeaseConflict, naming the holder, while
        another annotator's lease is live."""
        if (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, int | float)
            or not (math.isfinite(ttl_s) and ttl_s >= 0)
        ):
            raise InvalidInput(f"ttl_s must be a number of seconds >= 0; got {ttl_s!r}")
        with self._tx() as s:
            self._image_row(s, image_id)
            aid = self._annotator_id(s, annotator)
            if aid is None:
                raise InvalidInput("a lease needs an annotator")
            now = self._clock()
            free = or_(
                ImageRow.lease_holder_id.is_(None),
                ImageRow.lease_holder_id == aid,
                ImageRow.lease_expires_at <= now,
            )
            done = s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id, free)
                .values(lease_holder_id=aid, lease_expires_at=now + dt.timedelta(seconds=ttl_s))
            )
            row = self._image_row(s, image_id)
            if done.rowcount == 0:
                self._raise_leased(s, row)
            if row.status == "new":
                row.status = "in_progress"
            s.flush()
            s.refresh(row)
            return self._image_record(s, row)

    def release_image(self, image_id: int, annotator: AnnotatorRef) -> None:
        """End ``annotator``'s lease of the image (nothing if they hold none). Raises
        LeaseConflict when another annotator's lease is live."""
        with self._tx() as s:
            aid = self._annotator_id(s, annotator)
            row = self._image_row(s, image_id)
            self._check_lease(s, row, aid)
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id, ImageRow.lease_holder_id == aid)
                .values(lease_holder_id=None, lease_expires_at=None)
            )

    # ------------------------------------------------------------------ annotators

    def add_annotator(self, name: str) -> tuple[Annotator, str]:
        """Add an annotator; returns it and its access token (random; only its sha256 is
        stored, so this is the only time it is seen). InvalidInput if the name is taken."""
        name = checks.check_name(name)
        token = secrets.token_urlsafe(32)
        try:
            with self._tx() as s:
                if s.scalar(select(AnnotatorRow.id).where(AnnotatorRow.name == name)):
                    raise InvalidInput(f"an annotator named {name!r} exists; choose another name")
                row = AnnotatorRow(
                    name=name, token_hash=token_hash(token), created_at=self._clock()
                )
                s.add(row)
                s.flush()
                return Annotator(row.id, row.name, row.created_at), token
        except IntegrityError:
            raise InvalidInput(f"an annotator named {name!r} exists; choose another name") from None

    def annotator_for_token(self, token: str) -> Annotator | None:
        """The annotator whose token this is, or None."""
        if not isinstance(token, str) or not token:
            return None
        with self._tx() as s:
            row = s.scalar(select(AnnotatorRow).where(AnnotatorRow.token_hash == token_hash(token)))
            return None if row is None else Annotator(row.id, row.name, row.created_at)

    def get_annotator(self, name: str) -> Annotator:
        """The annotator named ``name`` (NotFound if none)."""
        with self._tx() as s:
            row = s.get(AnnotatorRow, self._annotator_id(s, name))
            return Annotator(row.id, row.name, row.created_at)

    def list_annotators(self) -> list[Annotator]:
        with self._tx() as s:
            rows = s.scalars(select(AnnotatorRow).order_by(AnnotatorRow.id))
            return [Annotator(r.id, r.name, r.created_at) for r in rows]

    # ------------------------------------------------------------------ model versions

    def register_model(
        self,
        name: str,
        fingerprint: str,
        file: str | None = None,
        *,
        parent: ModelVersion | int | None = None,
        dataset_version: DatasetVersion | int | None = None,
        evaluation: Any = None,
        make_current: bool = True,
    ) -> ModelVersion:
        """Register a model version (idempotent: an already known ``fingerprint`` returns its
        version, unchanged), in one transaction with its lineage: the ``parent`` version, the
        ``dataset_version`` it was trained on and its ``evaluation`` (any JSON). A new version
        becomes :meth:`current_model` unless ``make_current`` is False (then the current one is
        pinned first; see also :meth:`use_model` and :meth:`switch_model`)."""
        name = checks.check_name(name, "model name")
        fingerprint = checks.check_name(fingerprint, "model fingerprint")
        evaluation = checks.check_json(evaluation, "evaluation")
        if not make_current:
            current = self.current_model()
            if current is not None and self.config.get(_CURRENT_KEY) != current.fingerprint:
                self._update_config({_CURRENT_KEY: current.fingerprint})
        with self._tx() as s:
            row = s.scalar(
                select(ModelVersionRow).where(ModelVersionRow.fingerprint == fingerprint)
            )
            if row is None:
                row = ModelVersionRow(
                    name=name,
                    fingerprint=fingerprint,
                    file=file,
                    created_at=self._clock(),
                    parent_id=self._model_id(s, parent),
                    dataset_version_id=self._dataset_id(s, dataset_version),
                    evaluation=evaluation,
                )
                s.add(row)
                s.flush()
                created = True
            else:
                created = False
            record = self._model_record(row)
        if created and make_current and self.config.get(_CURRENT_KEY) is not None:
            self._update_config({_CURRENT_KEY: None})
        return record

    def switch_model(self, version: ModelVersion | int) -> ModelVersion:
        """Make the registered model version ``version`` (a record or id) the current one and
        the project's model (``project.json``'s ``model`` becomes its file), so that the
        server and ``segany serve`` load it from now on; its embedding cache is keyed by its
        own fingerprint. Raises NotFound, or InvalidInput for a version without a file."""
        with self._tx() as s:
            row = s.get(ModelVersionRow, self._model_id(s, version))
            record = self._model_record(row)
        if record.file is None:
            raise InvalidInput(f"model version {record.id} ({record.name}) has no weights file")
        self._update_config({_CURRENT_KEY: record.fingerprint, "model": record.file})
        return record

    def use_model(self, name: str, fingerprint: str, file: str | None = None) -> ModelVersion:
        """Make a model version the current one (registering it when its ``fingerprint`` is
        new; an already known one is reused, as it was, even if it is not the newest): the
        server calls this for the model it serves, so that every mask records it. Kept in
        ``project.json``."""
        record = self.register_model(name, fingerprint, file)
        if self.config.get(_CURRENT_KEY) != record.fingerprint:
            self._update_config({_CURRENT_KEY: record.fingerprint})
        return record

    def current_model(self) -> ModelVersion | None:
        """The model version set by :meth:`use_model`, else the newest registered one (None
        if none)."""
        pinned = self.config.get(_CURRENT_KEY)
        with self._tx() as s:
            row = None
            if pinned is not None:
                row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.fingerprint == pinned))
            if row is None:
                row = s.scalar(select(ModelVersionRow).order_by(ModelVersionRow.id.desc()).limit(1))
            return None if row is None else self._model_record(row)

    # ------------------------------------------------------------------ embedding cache

    def record_embedding_fingerprint(
        self, fingerprint: str, model_version: ModelVersion | None = None
    ) -> None:
        """Record the embedding fingerprint (:func:`segany.io.embedding.model_fingerprint`)
        of a model version (default: the current one) in ``project.json``, so that the cache
        progress is known without loading the model."""
        fingerprint = checks.check_name(fingerprint, "embedding fingerprint")
        version = model_version or self.current_model()
        if version is None:
            raise InvalidInput("no model version to record an embedding fingerprint for")
        known = dict(self.config.get(_EMBEDDINGS_KEY) or {})
        if known.get(version.fingerprint) != fingerprint:
            known[version.fingerprint] = fingerprint
            self._update_config({_EMBEDDINGS_KEY: known})

    def embedding_fingerprint(self, model_version: ModelVersion | None = None) -> str | None:
        """The recorded embedding fingerprint of a model version (default: the current one);
        None when no server has loaded that model yet."""
        version = model_version or self.current_model()
        if version is None:
            return None
        return (self.config.get(_EMBEDDINGS_KEY) or {}).get(version.fingerprint)

    def embedding_progress(self, fingerprint: str | None = None) -> dict[str, Any]:
        """``{"images", "cached", "fingerprint", "model"}``: how many of the project's images
        have an embedding cache file for ``fingerprint`` (default: the current model version's
        recorded one; ``cached`` is None when it is not known), and the current model version's
        name. Reads the folder and the database only: no model is loaded."""
        version = self.current_model()
        if fingerprint is None:
            fingerprint = self.embedding_fingerprint(version)
        with self._tx() as s:
            shas = list(s.scalars(select(ImageRow.sha256)))
        cached = (
            None if fingerprint is None else count_cached(self.embeddings_dir, shas, fingerprint)
        )
        return {
            "images": len(shas),
            "cached": cached,
            "fingerprint": fingerprint,
            "model": None if version is None else version.name,
        }

    def _update_config(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (None removes a key) to ``project.json`` as it is on disk now,
        written atomically, and to :attr:`config`."""
        path = self.root / PROJECT_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = dict(self.config)
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        write_json_atomic(path, config, indent=2, newline=True)
        self.config = config

    def list_models(self) -> list[ModelVersion]:
        with self._tx() as s:
            rows = s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.id))
            return [self._model_record(r) for r in rows]

    # ------------------------------------------------------------------ exchange

    def export(
        self, out: str | os.PathLike, *, format: str = "sa1b", polygons: bool = False
    ) -> dict[str, Any]:
        """Export the project as SA-1B (one JSON per image) or COCO (one instances file with
        RLE), plus a derived polygon file that keeps holes when ``polygons``; see
        :func:`.exchange.export_project`."""
        return export_project(self, out, format=format, polygons=polygons)

    def import_(
        self, path: str | os.PathLike, *, source: str | None = None, stage: int | None = None
    ) -> dict[str, int]:
        """Import an SA-1B folder or file, or a COCO instances file, optionally setting every
        mask's ``source`` and ``stage``; see :func:`.exchange.import_into`."""
        return import_into(self, path, source=source, stage=stage)
