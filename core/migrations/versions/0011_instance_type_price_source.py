"""instance_types.price_source: manual, static (the adapter's table) or provider-api

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows before this revision: prices an admin set or a sync copied from the static tables;
    # which is unknown, so "manual" (the source that claims nothing).
    op.add_column(
        "instance_types",
        sa.Column(
            "price_source",
            sqlmodel.sql.sqltypes.AutoString(length=16),
            nullable=False,
            server_default="manual",
        ),
    )


def downgrade() -> None:
    op.drop_column("instance_types", "price_source")
