"""Frozen dataset versions (the snapshots a model is retrained on) and model-version lineage:
a model version gets its held-out evaluation (JSON), its parent version and the dataset
version it was trained on.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("holdout", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_versions"),
        sa.UniqueConstraint("name", name="uq_dataset_versions_name"),
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("dataset_version_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            "fk_model_versions_parent_id_model_versions", "model_versions", ["parent_id"], ["id"]
        )
        batch.create_foreign_key(
            "fk_model_versions_dataset_version_id_dataset_versions",
            "dataset_versions",
            ["dataset_version_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint(
            "fk_model_versions_dataset_version_id_dataset_versions", type_="foreignkey"
        )
        batch.drop_constraint("fk_model_versions_parent_id_model_versions", type_="foreignkey")
        batch.drop_column("evaluation")
        batch.drop_column("dataset_version_id")
        batch.drop_column("parent_id")
    op.drop_table("dataset_versions")
