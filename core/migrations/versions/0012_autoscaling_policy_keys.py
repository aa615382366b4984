"""deployments.autoscaling: the old policy's keys become the specification's

The policy is now `core.autoscaling.AutoscalingConfig`, which refuses unknown keys, so a stored
policy with the old keys would only ever yield "invalid config" decisions. Cooldowns become the
delays, the queue-wait threshold moves from p95 milliseconds to average seconds, and the two keys
with no counterpart (in flight per instance, utilisation share) are dropped: the defaults apply.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 23:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED = {"scale_up_cooldown_s": "scale_up_delay_s", "scale_down_cooldown_s": "scale_down_delay_s"}
DROPPED = {"target_in_flight_per_instance", "scale_down_utilization"}


def _converted(policy: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in policy.items():
        if key in DROPPED:
            continue
        if key == "max_queue_wait_ms" and isinstance(value, int | float):
            out.setdefault("scale_up_queue_wait_s", value / 1000)
        else:
            out.setdefault(RENAMED.get(key, key), value)
    return out


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, autoscaling FROM deployments")).all()
    for row_id, policy in rows:
        policy = json.loads(policy) if isinstance(policy, str) else (policy or {})
        converted = _converted(policy)
        if converted != policy:
            conn.execute(
                sa.text("UPDATE deployments SET autoscaling = CAST(:p AS JSONB) WHERE id = :id"),
                {"p": json.dumps(converted), "id": row_id},
            )


def downgrade() -> None:
    # The old keys were a different policy; nothing to restore.
    pass
