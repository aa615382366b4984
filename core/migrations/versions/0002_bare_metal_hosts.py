"""bare_metal_hosts: hosts the ssh provider lends to one instance at a time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bare_metal_hosts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("user", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("private_key_ref", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("host_key", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("instance_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("gpu_inventory", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("python", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("agent_port", sa.Integer(), nullable=False),
        sa.Column("engine_port", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("claimed_by", sa.Uuid(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_bare_metal_hosts_name"), "bare_metal_hosts", ["name"], unique=True)
    op.create_index(
        op.f("ix_bare_metal_hosts_instance_type"), "bare_metal_hosts", ["instance_type"]
    )
    op.create_index(op.f("ix_bare_metal_hosts_project_id"), "bare_metal_hosts", ["project_id"])
    op.create_index(
        op.f("ix_bare_metal_hosts_claimed_by"), "bare_metal_hosts", ["claimed_by"], unique=True
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_bare_metal_hosts_claimed_by"), table_name="bare_metal_hosts")
    op.drop_index(op.f("ix_bare_metal_hosts_project_id"), table_name="bare_metal_hosts")
    op.drop_index(op.f("ix_bare_metal_hosts_instance_type"), table_name="bare_metal_hosts")
    op.drop_index(op.f("ix_bare_metal_hosts_name"), table_name="bare_metal_hosts")
    op.drop_table("bare_metal_hosts")
