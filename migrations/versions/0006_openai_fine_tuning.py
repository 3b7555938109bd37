"""what the OpenAI-compatible API records beside tuneserve's own columns

A fine-tuning job made through /v1/fine_tuning/jobs is an ordinary job; these columns hold what
only that API speaks of: the model-name suffix, the caller's metadata, the file ids it named,
whether it was paused (a pause is a cancel that /v1 shows as paused), and what each "auto"
hyperparameter became and why. A dataset uploaded through /v1/files records its purpose.

Revision ID: 0006_openai_fine_tuning
Revises: 0005_jobs_outlive_datasets
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_openai_fine_tuning"
down_revision: str | None = "0005_jobs_outlive_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("training_file", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("validation_file", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("fine_tuning", sa.JSON(), nullable=True))
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.add_column(sa.Column("purpose", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_column("purpose")
    with op.batch_alter_table("jobs") as batch_op:
        for column in ("fine_tuning", "paused", "validation_file", "training_file", "metadata", "suffix"):
            batch_op.drop_column(column)
