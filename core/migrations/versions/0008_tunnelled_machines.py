"""machines behind NAT joining through the outbound tunnel: one-time enrolments, machines (their
credential, key, sharing slots and quotas, claim and connection), GPU use per local day

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_str = AutoString
_at = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "machine_enrolments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", _str(length=64), nullable=False),
        sa.Column("name", _str(length=120), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("expires_at", _at, nullable=False),
        sa.Column("used_at", _at, nullable=True),
        sa.Column("machine_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", _at, nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_machine_enrolments_token_hash"), "machine_enrolments", ["token_hash"], unique=True
    )
    op.create_index(op.f("ix_machine_enrolments_project_id"), "machine_enrolments", ["project_id"])
    op.create_table(
        "machines",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", _str(length=120), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("public_key", _str(length=64), nullable=False),
        sa.Column("credential_hash", _str(length=64), nullable=False),
        sa.Column("credential_expires_at", _at, nullable=False),
        sa.Column("revoked_at", _at, nullable=True),
        sa.Column("instance_type", _str(length=64), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_inventory", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("timezone", _str(length=64), nullable=False),
        sa.Column("slots", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("quota_gpus", sa.Integer(), nullable=True),
        sa.Column("quota_gpu_hours_per_day", sa.Float(), nullable=True),
        sa.Column("claimed_by", sa.Uuid(), nullable=True),
        sa.Column("claimed_at", _at, nullable=True),
        sa.Column("desired_env", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("relay_url", _str(length=255), nullable=True),
        sa.Column("remote_address", _str(length=255), nullable=True),
        sa.Column("connected_at", _at, nullable=True),
        sa.Column("disconnected_at", _at, nullable=True),
        sa.Column("last_seen_at", _at, nullable=True),
        sa.Column("running_instance", _str(length=64), nullable=True),
        sa.Column("created_at", _at, nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_machines_project_id"), "machines", ["project_id"])
    op.create_index(op.f("ix_machines_owner_id"), "machines", ["owner_id"])
    op.create_index(
        op.f("ix_machines_credential_hash"), "machines", ["credential_hash"], unique=True
    )
    op.create_index(op.f("ix_machines_instance_type"), "machines", ["instance_type"])
    op.create_index(op.f("ix_machines_claimed_by"), "machines", ["claimed_by"], unique=True)
    op.create_table(
        "machine_usage",
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("day", _str(length=10), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("machine_id", "day"),
    )


def downgrade() -> None:
    op.drop_table("machine_usage")
    for index in ("claimed_by", "instance_type", "credential_hash", "owner_id", "project_id"):
        op.drop_index(op.f(f"ix_machines_{index}"), table_name="machines")
    op.drop_table("machines")
    op.drop_index(op.f("ix_machine_enrolments_project_id"), table_name="machine_enrolments")
    op.drop_index(op.f("ix_machine_enrolments_token_hash"), table_name="machine_enrolments")
    op.drop_table("machine_enrolments")
