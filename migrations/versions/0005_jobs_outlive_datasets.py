"""jobs outlive their dataset; a failed job records whose fault it was

A finished job keeps its history (events, metrics, checkpoints) and its tuned model when the
dataset it trained on is deleted: jobs.dataset_id becomes nullable, ON DELETE SET NULL.
jobs.error_kind classifies a failure: data, environment or bug.

Revision ID: 0005_jobs_outlive_datasets
Revises: 0003_experiments
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_jobs_outlive_datasets"
down_revision: str | None = "0003_experiments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0001 created the foreign key unnamed; SQLite's batch mode finds an unnamed key through this
# naming convention when it rebuilds the table.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _dataset_fk_name() -> str:
    """The existing key's name: PostgreSQL's own (jobs_dataset_id_fkey) or, for SQLite's unnamed
    key, the name the naming convention gives it."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("jobs"):
        if fk["constrained_columns"] == ["dataset_id"] and fk.get("name"):
            return str(fk["name"])
    return "fk_jobs_dataset_id_datasets"


def upgrade() -> None:
    old = _dataset_fk_name()
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(old, type_="foreignkey")
        batch_op.alter_column("dataset_id", existing_type=sa.String(length=40), nullable=True)
        batch_op.create_foreign_key("fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"],
                                    ondelete="SET NULL")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("error_kind", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("error_kind")
    op.execute("DELETE FROM jobs WHERE dataset_id IS NULL")
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(_dataset_fk_name(), type_="foreignkey")
        batch_op.alter_column("dataset_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_foreign_key("fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"],
                                    ondelete="RESTRICT")
