"""Agent heartbeats reach a real API (uvicorn, PostgreSQL, Redis); wrong tokens are refused."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlmodel import select

from agent.identity import bundled_agent, integrity_ok
from api.app import create_app
from api.security import new_agent_token
from core.models import (
    Deployment,
    Instance,
    InstanceMetric,
    InstanceState,
    InstanceType,
    Project,
    Provider,
)
from core.redis_keys import INSTANCE_LOAD
from core.settings import Settings
from tests.agent.helpers import running_agent, serving, wait_for

HEARTBEAT = "/api/v1/agents/heartbeat"


@pytest.fixture
async def api_url(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def instance(sessionmaker: Any) -> tuple[uuid.UUID, str]:
    """An instance row and the agent token handed to its machine."""
    token, hashed = new_agent_token()
    async with sessionmaker() as session:
        project = Project(name="p")
        provider = Provider(name="local", kind="local")
        session.add_all([project, provider])
        await session.flush()
        itype = InstanceType(provider_id=provider.id, name="cpu-sim")
        session.add(itype)
        await session.flush()
        deployment = Deployment(
            project_id=project.id,
            name="d",
            model="sim-model",
            served_name="sim-model",
            provider_id=provider.id,
            instance_type_id=itype.id,
        )
        session.add(deployment)
        await session.flush()
        row = Instance(
            deployment_id=deployment.id,
            project_id=project.id,
            provider_id=provider.id,
            instance_type_id=itype.id,
            workflow_id="instance-test",
            agent_token_hash=hashed,
        )
        session.add(row)
        await session.commit()
        return row.id, token


def heartbeat_body(instance_id: uuid.UUID, **info: str) -> dict[str, Any]:
    return {
        "instance_id": str(instance_id),
        "agent_info": {
            "version": info.get("version", bundled_agent().version),
            "build_date": "2026-11-28",
            "checksum": info.get("checksum", bundled_agent().checksum),
        },
        "engine_state": "running",
        "engine_ready": True,
        "load": {
            "requests_running": 2,
            "requests_waiting": 1,
            "kv_cache_usage": 0.4,
            "in_flight": 3,
        },
        "gpus": [
            {"index": 0, "utilization_pct": 50, "memory_used_mb": 1000, "memory_total_mb": 8000},
            {"index": 1, "utilization_pct": 70, "memory_used_mb": 3000, "memory_total_mb": 8000},
        ],
    }


async def read_instance(sessionmaker: Any, instance_id: uuid.UUID) -> Instance:
    async with sessionmaker() as session:
        row = await session.get(Instance, instance_id)
        assert row is not None
        return row


async def test_real_agent_heartbeats_reach_the_api(
    tmp_path: Path,
    api_url: str,
    instance: tuple[uuid.UUID, str],
    sessionmaker: Any,
    redis_client: aioredis.Redis,
) -> None:
    instance_id, token = instance
    async with running_agent(
        tmp_path, control_plane_url=api_url, instance_id=instance_id, token=token
    ) as agent:

        async def ready_load() -> dict[str, Any] | None:
            raw = await redis_client.hget(INSTANCE_LOAD, str(instance_id))
            load = json.loads(raw) if raw else None
            return load if load and load["engine_ready"] else None

        load = await wait_for(ready_load, 30, "a heartbeat from a ready engine")
        assert load["in_flight"] == 0 and load["kv_cache_usage"] == 0
        assert load["ts"] > 0

        # No GPU here: the simulator's modelled busy share stands in for its utilisation, from
        # the second heartbeat on (a share needs two readings); idle, it is 0, not absent.
        async def utilization(busy: bool) -> list[float] | None:
            raw = await redis_client.hget(INSTANCE_LOAD, str(instance_id))
            value = json.loads(raw)["gpu_utilization"] if raw else None
            return [value] if value is not None and (value > 0) == busy else None

        assert await wait_for(lambda: utilization(False), 30, "an idle engine's 0 %") == [0]
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 200, "stream": False}
        async with httpx.AsyncClient(base_url=agent.engine_url, timeout=60) as engine:
            busy_requests = [asyncio.create_task(engine.post("/v1/completions", json=body))]
            [busy] = await wait_for(lambda: utilization(True), 30, "a busy engine's share")
            await asyncio.gather(*busy_requests)
        assert 0 < busy <= 100
        row = await read_instance(sessionmaker, instance_id)
        assert row.last_heartbeat_at is not None
        assert row.agent_version == bundled_agent().version
        assert row.agent_checksum == bundled_agent().checksum
        assert row.agent_integrity_ok is True
        async with sessionmaker() as session:
            samples = (await session.exec(select(InstanceMetric))).all()
        assert samples and all(s.instance_id == instance_id for s in samples)
        assert any(s.requests_running == 0 for s in samples)
        assert token not in agent.log()


async def test_a_crash_looping_engine_reaches_the_control_plane(
    tmp_path: Path,
    api_url: str,
    instance: tuple[uuid.UUID, str],
    sessionmaker: Any,
    redis_client: aioredis.Redis,
) -> None:
    instance_id, token = instance
    crashing = f"{sys.executable} -c 'raise SystemExit(3)'"
    async with running_agent(
        tmp_path,
        control_plane_url=api_url,
        instance_id=instance_id,
        token=token,
        engine_command=crashing,
        crash_loop_threshold=2,
        restart_backoff_s=0.5,
    ):

        async def crash_loop_sample() -> InstanceMetric | None:
            async with sessionmaker() as session:
                samples = (await session.exec(select(InstanceMetric))).all()
            return next((s for s in samples if s.data["engine_state"] == "crash_loop"), None)

        sample = await wait_for(crash_loop_sample, 30, "a heartbeat reporting the crash loop")
    assert sample.data["engine_ready"] is False and sample.data["engine_restarts"] >= 2
    load = json.loads(await redis_client.hget(INSTANCE_LOAD, str(instance_id)) or "{}")
    assert load["engine_ready"] is False and load["in_flight"] is None


async def test_wrong_token_is_refused_and_logged_without_the_token(
    api_url: str,
    instance: tuple[uuid.UUID, str],
    sessionmaker: Any,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instance_id, token = instance
    wrong = token[:-4] + "AAAA"
    caplog.set_level(logging.WARNING, logger="api.agents")
    async with httpx.AsyncClient(base_url=api_url) as client:
        refused = await client.post(
            HEARTBEAT,
            json=heartbeat_body(instance_id),
            headers={"Authorization": f"Bearer {wrong}"},
        )
        missing = await client.post(HEARTBEAT, json=heartbeat_body(instance_id))
        unknown = await client.post(
            HEARTBEAT,
            json=heartbeat_body(uuid.uuid4()),
            headers={"Authorization": f"Bearer {token}"},
        )
        malformed = await client.post(
            HEARTBEAT,
            json={"instance_id": str(instance_id)},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert (refused.status_code, missing.status_code, unknown.status_code) == (401, 401, 401)
    assert malformed.status_code == 422
    assert "refused agent heartbeat" in caplog.text and str(instance_id) in caplog.text
    assert wrong not in caplog.text and token not in caplog.text
    row = await read_instance(sessionmaker, instance_id)
    assert row.last_heartbeat_at is None
    assert await redis_client.hget(INSTANCE_LOAD, str(instance_id)) is None


async def test_heartbeat_records_load_gpus_and_flags_a_foreign_agent(
    api_url: str,
    instance: tuple[uuid.UUID, str],
    sessionmaker: Any,
    redis_client: aioredis.Redis,
) -> None:
    instance_id, token = instance
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers) as client:
        good = await client.post(HEARTBEAT, json=heartbeat_body(instance_id))
        assert good.status_code == 200 and good.json()["integrity_ok"] is True
        load = json.loads(await redis_client.hget(INSTANCE_LOAD, str(instance_id)) or "{}")
        assert (load["requests_running"], load["requests_waiting"], load["in_flight"]) == (2, 1, 3)
        assert load["gpu_utilization"] == 60

        tampered = await client.post(HEARTBEAT, json=heartbeat_body(instance_id, checksum="0" * 64))
        assert tampered.status_code == 200 and tampered.json()["integrity_ok"] is False
    row = await read_instance(sessionmaker, instance_id)
    assert row.agent_integrity_ok is False and row.agent_checksum == "0" * 64
    async with sessionmaker() as session:
        samples = (await session.exec(select(InstanceMetric))).all()
    assert len(samples) == 2
    assert samples[0].gpu_memory_used_mb == 4000 and samples[0].kv_cache_usage == 0.4


async def test_heartbeats_of_a_terminated_instance_are_not_recorded(
    api_url: str,
    instance: tuple[uuid.UUID, str],
    sessionmaker: Any,
    redis_client: aioredis.Redis,
) -> None:
    instance_id, token = instance
    async with sessionmaker() as session:
        row = await session.get(Instance, instance_id)
        row.state = InstanceState.terminated
        await session.commit()
    async with httpx.AsyncClient(base_url=api_url) as client:
        answer = await client.post(
            HEARTBEAT,
            json=heartbeat_body(instance_id),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200 and answer.json()["ok"] is False
    assert await redis_client.hget(INSTANCE_LOAD, str(instance_id)) is None
    assert (await read_instance(sessionmaker, instance_id)).last_heartbeat_at is None


def test_integrity_needs_the_expected_version_and_the_bundled_checksum() -> None:
    agent = bundled_agent()
    assert integrity_ok(agent.version, agent.checksum, pinned_version=None)
    assert not integrity_ok(agent.version, "f" * 64, pinned_version=None)
    assert not integrity_ok(agent.version, agent.checksum, pinned_version="9.9.9")
    assert integrity_ok("9.9.9", agent.checksum, pinned_version="9.9.9")
