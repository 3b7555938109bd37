"""a job records its memory plan

jobs.memory_plan (JSON): the plan the worker made before loading the model (each term in GiB,
the free memory, the chosen quantization, optimizer and gradient checkpointing, and why).

Revision ID: 0007_job_memory_plan
Revises: 0006_openai_fine_tuning
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_job_memory_plan"
down_revision: str | None = "0006_openai_fine_tuning"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("memory_plan", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("memory_plan")
