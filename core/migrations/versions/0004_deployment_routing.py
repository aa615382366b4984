"""deployments.routing: one typed routing strategy instead of the free-text session_affinity

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:00:00

Existing rows keep their behaviour: affinity "none" becomes least_load, "header" sticky_header,
"user" sticky_user (anything else, which the API never accepted, the default sticky_header).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

routing_strategy = sa.Enum("least_load", "sticky_header", "sticky_user", name="routingstrategy")


def upgrade() -> None:
    routing_strategy.create(op.get_bind(), checkfirst=True)
    op.add_column(
        "deployments",
        sa.Column("routing", routing_strategy, nullable=False, server_default="sticky_header"),
    )
    op.execute(
        "UPDATE deployments SET routing = (CASE session_affinity"
        " WHEN 'none' THEN 'least_load' WHEN 'user' THEN 'sticky_user'"
        " ELSE 'sticky_header' END)::routingstrategy"
    )
    op.alter_column("deployments", "routing", server_default=None)
    op.drop_column("deployments", "session_affinity")


def downgrade() -> None:
    op.add_column(
        "deployments",
        sa.Column(
            "session_affinity",
            sqlmodel.sql.sqltypes.AutoString(length=16),
            nullable=False,
            server_default="header",
        ),
    )
    op.execute(
        "UPDATE deployments SET session_affinity = CASE routing"
        " WHEN 'least_load' THEN 'none' WHEN 'sticky_user' THEN 'user' ELSE 'header' END"
    )
    op.alter_column("deployments", "session_affinity", server_default=None)
    op.drop_column("deployments", "routing")
    routing_strategy.drop(op.get_bind(), checkfirst=True)
