"""Migrations: upgrade from an empty database to head creates every table."""

from __future__ import annotations

import json
import uuid

import asyncpg

from core.migrate import upgrade_async
from tests.conftest import Stack, _admin_execute, _asyncpg_dsn

EXPECTED_TABLES = {
    "users", "projects", "project_members", "api_keys", "providers", "instance_types",
    "deployments", "instances", "instance_state_history", "instance_actions",
    "instance_volumes", "request_logs", "instance_metrics", "alembic_version",
}  # fmt: skip


async def _seed_owners(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A project, a provider and an instance type, for a deployment row written in raw SQL."""
    project, provider, itype = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO projects (id, name, created_at) VALUES ($1, 'p', now())", project
    )
    await conn.execute(
        "INSERT INTO providers (id, name, kind, enabled, config, created_at)"
        " VALUES ($1, 'local', 'local', true, '{}', now())",
        provider,
    )
    await conn.execute(
        "INSERT INTO instance_types (id, provider_id, name, gpu_count, gpu_memory_gb,"
        " vcpus, ram_gb, price_per_hour, currency, zones)"
        " VALUES ($1, $2, 't', 1, 80, 8, 64, 1, 'EUR', '[]')",
        itype,
        provider,
    )
    return project, provider, itype


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


async def test_routing_strategy_keeps_each_deployments_session_affinity(stack: Stack) -> None:
    """0004: none/header/user become least_load/sticky_header/sticky_user, row by row."""
    name = f"m_{uuid.uuid4().hex[:10]}"
    await _admin_execute(stack, f"CREATE DATABASE {name}")
    try:
        url = stack.db_url(name)
        await upgrade_async(url, "0003")
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            project, provider, itype = await _seed_owners(conn)
            for affinity in ("none", "header", "user"):
                await conn.execute(
                    "INSERT INTO deployments (id, project_id, name, model, served_name, flavor,"
                    " provider_id, instance_type_id, min_instances, max_instances,"
                    " autoscaling_enabled, autoscaling, engine_args, session_affinity,"
                    " created_at, updated_at) VALUES ($1, $2, $3, 'm', $3, 'cpu-sim', $4, $5,"
                    " 0, 1, false, '{}', '{}', $3, now(), now())",
                    uuid.uuid4(),
                    project,
                    affinity,
                    provider,
                    itype,
                )
        finally:
            await conn.close()
        await upgrade_async(url, "0004")
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT name, routing::text AS routing FROM deployments")
        finally:
            await conn.close()
        assert {r["name"]: r["routing"] for r in rows} == {
            "none": "least_load",
            "header": "sticky_header",
            "user": "sticky_user",
        }
    finally:
        await _admin_execute(stack, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_old_autoscaling_policies_become_valid_configs(stack: Stack) -> None:
    """0012: a policy stored with the old keys is one AutoscalingConfig accepts afterwards."""
    from core.autoscaling import AutoscalingConfig

    name = f"m_{uuid.uuid4().hex[:10]}"
    await _admin_execute(stack, f"CREATE DATABASE {name}")
    try:
        url = stack.db_url(name)
        await upgrade_async(url, "0011")
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            project, provider, itype = await _seed_owners(conn)
            old = {
                "scale_up_cooldown_s": 30,
                "scale_down_cooldown_s": 120,
                "max_queue_wait_ms": 2500,
                "target_in_flight_per_instance": 8,
                "scale_down_utilization": 0.5,
            }
            await conn.execute(
                "INSERT INTO deployments (id, project_id, name, model, served_name, flavor,"
                " provider_id, instance_type_id, min_instances, max_instances,"
                " autoscaling_enabled, autoscaling, engine_args, routing, created_at, updated_at)"
                " VALUES ($1, $2, 'd', 'm', 'd', 'cpu-sim', $3, $4, 0, 1, true, $5::jsonb,"
                " '{}', 'least_load', now(), now())",
                uuid.uuid4(),
                project,
                provider,
                itype,
                json.dumps(old),
            )
        finally:
            await conn.close()
        await upgrade_async(url, "0012")
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            stored = json.loads(await conn.fetchval("SELECT autoscaling::text FROM deployments"))
        finally:
            await conn.close()
        assert stored == {
            "scale_up_delay_s": 30,
            "scale_down_delay_s": 120,
            "scale_up_queue_wait_s": 2.5,
        }
        AutoscalingConfig.model_validate(stored)
    finally:
        await _admin_execute(stack, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
