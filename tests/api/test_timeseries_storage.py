"""Time series storage: TimescaleDB hypertables where the extension exists (docker-compose),
plain indexed tables otherwise (embedded PostgreSQL); the API reads both the same way."""

from __future__ import annotations

import asyncpg

from tests.conftest import _asyncpg_dsn

SERIES = {"request_logs", "instance_metrics"}


async def test_series_tables_match_the_servers_capabilities(db_url: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(db_url))
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        installed = await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        )
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY($1::text[])",
                list(SERIES),
            )
        }
        if available:
            hypertables = {
                r["hypertable_name"]
                for r in await conn.fetch(
                    "SELECT hypertable_name FROM timescaledb_information.hypertables"
                )
            }
            assert installed == 1 and hypertables >= SERIES
            for table in SERIES:  # the time column is part of each primary key
                assert "(id, at)" in indexes[f"{table}_pkey"]
        else:
            assert installed == 0
            assert "(project_id, at)" in indexes["ix_request_logs_project_at"]
            assert "(deployment_id, at)" in indexes["ix_request_logs_deployment_at"]
            assert "(instance_id, at)" in indexes["ix_instance_metrics_instance_at"]
            kinds = await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY($1::text[])",
                list(SERIES),
            )
            assert {r["relname"]: r["relkind"] for r in kinds} == dict.fromkeys(SERIES, "r")
    finally:
        await conn.close()
