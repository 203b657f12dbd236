"""Annotators get a token (its sha256 hash, unique); events get their duration in ms (the
time from an annotator's first prompt to the accept, from which seconds per mask come).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotators", sa.Column("token_hash", sa.String(64), nullable=True))
    op.create_index("ix_annotators_token_hash", "annotators", ["token_hash"], unique=True)
    op.add_column("events", sa.Column("elapsed_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("elapsed_ms")
    op.drop_index("ix_annotators_token_hash", table_name="annotators")
    with op.batch_alter_table("annotators") as batch:
        batch.drop_column("token_hash")
