"""Database engines and migrations of the project store.

:func:`make_engine` opens SQLite (WAL journal, foreign keys on, a busy timeout, ``synchronous
= FULL``, every transaction ``BEGIN IMMEDIATE`` so that concurrent writers queue instead of
failing) or PostgreSQL (``postgresql+psycopg://...``). :func:`upgrade` brings a database to the
newest schema with the Alembic migrations shipped in this package (no ``alembic.ini``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import InvalidInput, StoreError

__all__ = [
    "HEAD",
    "MIGRATIONS",
    "current_revision",
    "make_engine",
    "parse_db_url",
    "public_url",
    "schema_diffs",
    "sqlite_url",
    "upgrade",
]

#: The folder of the Alembic environment (``env.py``, ``versions/``).
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest schema revision.
HEAD = "0003"
#: Seconds a SQLite connection waits for another writer's lock before failing.
BUSY_TIMEOUT_S = 30


def sqlite_url(path: Path) -> URL:
    """The SQLAlchemy URL of the SQLite file ``path``."""
    return URL.create("sqlite", database=str(path))


def parse_db_url(url: str | URL) -> URL:
    """``url`` parsed; ``postgresql://`` means ``postgresql+psycopg://`` (psycopg 3). Only
    SQLite and PostgreSQL are allowed."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise InvalidInput(
            f"cannot parse the database URL ({e}); give postgresql+psycopg://USER@HOST:PORT/DB"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInput(
            f"unsupported database {parsed.get_backend_name()!r}: use SQLite (the default, a file"
            " in the project folder) or postgresql+psycopg://USER@HOST:PORT/DB"
        )
    return parsed


def public_url(url: URL) -> str:
    """``url`` without its password, as stored in ``project.json``."""
    return url._replace(password=None).render_as_string(hide_password=False)


def make_engine(url: URL) -> Engine:
    """An engine on ``url`` (see the module docstring for the SQLite settings)."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None for an empty database)."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default the newest) in one transaction. Refuses
    a database that has tables but is not a segany project's, or whose revision this version
    of segany does not know (made by a newer segany)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if tables - {"alembic_version"}:
            raise StoreError(
                f"the database holds tables {sorted(tables)} but no segany schema version: "
                "give an empty database or a segany project's"
            )
    else:
        with engine.connect() as conn:
            known = {
                s.revision for s in ScriptDirectory.from_config(_config(conn)).walk_revisions()
            }
        if current not in known:
            raise StoreError(
                f"the database has schema revision {current!r}, which this segany does not "
                f"know (known: {sorted(known)}): it was made by a newer segany; upgrade segany"
            )
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def schema_diffs(engine: Engine) -> list[Any]:
    """Differences between the ORM models and the database's schema (Alembic's
    ``compare_metadata``); empty when the migrations build exactly the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from .models import Base

    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(mc, Base.metadata)
