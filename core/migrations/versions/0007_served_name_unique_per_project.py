"""deployments: a live deployment's served name is unique within its project (a partial unique
index), no longer checked across projects

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:00:00

The API used to refuse a served name used by any live deployment with a read before the insert,
which two concurrent requests could both pass; the index makes the database the judge, per
project (the gateway resolves names within the key's project). Retired deployments
(deleted_at set) keep their name without holding it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_deployments_project_served_name_live"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "deployments",
        ["project_id", "served_name"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="deployments")
