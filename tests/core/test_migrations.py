"""Migrations: upgrade from an empty database to head creates every table."""

from __future__ import annotations

import uuid

import asyncpg

from core.migrate import upgrade_async
from tests.conftest import Stack, _admin_execute, _asyncpg_dsn

EXPECTED_TABLES = {
    "users", "projects", "project_members", "api_keys", "providers", "instance_types",
    "deployments", "instances", "instance_state_history", "instance_actions",
    "instance_volumes", "request_logs", "instance_metrics", "alembic_version",
}  # fmt: skip


async def test_upgrade_from_empty_to_head(stack: Stack) -> None:
    name = f"m_{uuid.uuid4().hex[:10]}"
    await _admin_execute(stack, f"CREATE DATABASE {name}")
    try:
        url = stack.db_url(name)
        await upgrade_async(url)
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        assert EXPECTED_TABLES <= {r["tablename"] for r in rows}
        assert version is not None
        await upgrade_async(url)  # a second run is a no-op, not an error
    finally:
        await _admin_execute(stack, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
