"""Alembic environment of the project store, run programmatically by
:func:`segany.engine.store.db.upgrade` on a connection it passes in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from segany.engine.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
