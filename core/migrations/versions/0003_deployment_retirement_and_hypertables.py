"""deployments.deleted_at; TimescaleDB hypertables for the time series when the extension exists

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:10:00

Without TimescaleDB (plain PostgreSQL) `request_logs` and `instance_metrics` stay ordinary tables
with their (key, time) indexes, and the API downsamples with `date_bin`. With it, both become
hypertables partitioned on `at`; a hypertable's unique constraints must contain the time column,
so their primary keys become (id, at).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HYPERTABLES = ("request_logs", "instance_metrics")


def timescaledb_available() -> bool:
    bind = op.get_bind()
    found = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    return found is not None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    if not timescaledb_available():
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    for table in HYPERTABLES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id, at)")
        op.execute(
            f"SELECT create_hypertable('{table}', 'at', chunk_time_interval => INTERVAL '1 day', "
            "migrate_data => true, if_not_exists => true)"
        )


def downgrade() -> None:
    # Hypertables stay hypertables: converting back means copying the data out and in again.
    op.drop_column("deployments", "deleted_at")
