"""The data engine: annotation projects with SAM in the loop.

:mod:`segany.engine.store` is the project store (a folder of content-addressed images and a
SQLite or PostgreSQL database of masks, events, model versions and annotators). It needs the
``engine`` extra (SQLAlchemy, Alembic; ``postgres`` for PostgreSQL) and imports no torch.
"""
