"""governance: session token versions, project quotas, trusted deployments, volume prices

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "deployments", sa.Column("trusted", sa.Boolean(), nullable=False, server_default="false")
    )
    op.add_column(
        "providers",
        sa.Column("volume_price_per_gb_month", sa.Float(), nullable=False, server_default="0"),
    )
    op.add_column(
        "providers",
        sa.Column(
            "volume_currency",
            sqlmodel.sql.sqltypes.AutoString(length=3),
            nullable=False,
            server_default="EUR",
        ),
    )
    op.create_table(
        "project_quotas",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("allowed_provider_ids", postgresql.JSONB(), nullable=True),
        sa.Column("allowed_instance_type_ids", postgresql.JSONB(), nullable=True),
        sa.Column("max_instances", sa.Integer(), nullable=True),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("monthly_budget", sa.Float(), nullable=True),
        sa.Column("budget_currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("monthly_gpu_hours", sa.Float(), nullable=True),
        sa.Column("budget_warning_percent", sa.Integer(), nullable=False),
        sa.Column("max_key_rpm", sa.Integer(), nullable=True),
        sa.Column("max_key_tpm", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id"),
    )


def downgrade() -> None:
    op.drop_table("project_quotas")
    op.drop_column("providers", "volume_currency")
    op.drop_column("providers", "volume_price_per_gb_month")
    op.drop_column("deployments", "trusted")
    op.drop_column("users", "token_version")
