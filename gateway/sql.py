"""Every SQL statement the gateway runs, and the one COPY target.

The schema is defined by the SQLModel tables in core/models.py (migrated by Alembic);
tests/gateway/test_sql.py prepares each statement here against a schema built from that metadata,
so a renamed table or column fails a test instead of the gateway at run time. Keep SQL out of the
other gateway modules.
"""

from __future__ import annotations

from dataclasses import dataclass

# Served name -> deployment, for models with no ready instance yet (requests that wait in the
# queue) and for /v1/models. A retired deployment's name is free for another.
LIVE_DEPLOYMENTS = (
    "SELECT id, project_id, served_name, routing FROM deployments WHERE deleted_at IS NULL"
)

# An API key by the SHA-256 of its secret (secrets are never stored).
API_KEY_BY_HASH = (
    "SELECT id, project_id, rpm_limit, tpm_limit FROM api_keys"
    " WHERE key_hash = $1 AND revoked_at IS NULL"
)

# Keys seen since the last flush (batched off the hot path).
TOUCH_API_KEYS = "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class CopyTarget:
    """A table written with COPY (asyncpg's copy_records_to_table): rows in `columns` order."""

    table: str
    columns: tuple[str, ...]

    def as_select(self) -> str:
        """The same table and columns as a statement PostgreSQL can check."""
        return f"SELECT {', '.join(self.columns)} FROM {self.table}"


REQUEST_LOGS = CopyTarget(
    "request_logs",
    (
        "at",
        "api_key_id",
        "project_id",
        "deployment_id",
        "instance_id",
        "model",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "latency_ms",
        "status_code",
        "streamed",
    ),
)
