"""learning_rate "auto" and search experiments

jobs.chosen_learning_rate: the rate a range test chose for a job asked to train at "auto".
jobs.search_trial: the Optuna trial number of a search experiment's job.
experiments.search: a search experiment's space, sampler, pruner, trials and parallelism (its
Optuna study lives in the same database, in Optuna's own tables, named after the experiment).

Revision ID: 0008_search_and_auto_lr
Revises: 0007_job_memory_plan
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_search_and_auto_lr"
down_revision: str | None = "0007_job_memory_plan"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("chosen_learning_rate", sa.Float(), nullable=True))
        batch.add_column(sa.Column("search_trial", sa.Integer(), nullable=True))
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("search", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("search")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("search_trial")
        batch.drop_column("chosen_learning_rate")
