"""deployments.routing gains prefix_aware (the gateway's prefix-cache-aware strategy)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 12:00:00

Downgrade: PostgreSQL cannot drop an enum value, so the type is rebuilt without it; deployments
that used prefix_aware go back to least_load.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TYPE routingstrategy ADD VALUE IF NOT EXISTS 'prefix_aware'")


def downgrade() -> None:
    op.execute("UPDATE deployments SET routing = 'least_load' WHERE routing = 'prefix_aware'")
    op.execute("ALTER TYPE routingstrategy RENAME TO routingstrategy_old")
    op.execute("CREATE TYPE routingstrategy AS ENUM ('least_load', 'sticky_header', 'sticky_user')")
    op.execute(
        "ALTER TABLE deployments ALTER COLUMN routing TYPE routingstrategy"
        " USING routing::text::routingstrategy"
    )
    op.execute("DROP TYPE routingstrategy_old")
