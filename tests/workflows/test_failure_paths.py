"""Every lifecycle path that is not the happy one: each ends with nothing left at the provider."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from functools import partial

import httpx
import redis.asyncio as aioredis
from sqlmodel import col, select

from activities.providers.base import CreateRequest
from activities.providers.local.adapter import LocalCompute
from activities.providers.local.settings import LocalFaults
from core.models import Instance, InstanceState, InstanceVolume
from core.redis_keys import ROUTING_REGISTRY
from core.settings import Settings
from core.states import is_legal_path
from tests.factories import seed
from tests.workflows.helpers import (
    actions,
    engine_headers,
    history,
    local_providers,
    provision,
    record_history,
    running_worker,
    wait_state,
)
from workflows.client import drain_instance, terminate_instance
from workflows.instance import InstanceWorkflow

S = InstanceState
SIM_FAST = {"model-load-delay-s": 0.2}


async def _nothing_left(settings: Settings) -> None:
    local = LocalCompute(settings)
    machines = await local.list_tagged()
    volumes = [v for v in await local.list_tagged_volumes() if v.delete_on_terminate]
    assert machines == [] and volumes == [], (machines, volumes)


async def test_boot_timeout_when_engine_never_ready(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, boot_timeout_s=4)
    providers = local_providers(settings, engine_never_ready=True)
    async with running_worker(settings, temporal_client, providers):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
        await record_history(temporal_client, instance.workflow_id, "boot_timeout")
    assert done.termination_reason == "boot_timeout"
    assert "not ready within 4s" in (done.error or "")
    path = await history(sessionmaker, instance.id)
    assert path == [S.provisioning, S.booting, S.startup_failed, S.terminating, S.terminated]
    failed = [a for a in await actions(sessionmaker, instance.id) if a.status == "failed"]
    assert failed and failed[0].step in ("engine_http_up", "model_loaded")
    await _nothing_left(settings)


async def test_create_without_capacity_fails_cleanly(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session)
    providers = local_providers(settings, fail_create="capacity")
    async with running_worker(settings, temporal_client, providers):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
    assert done.termination_reason == "startup_error"
    assert "no capacity" in (done.error or "")
    create = [a for a in await actions(sessionmaker, instance.id) if a.step == "provider_create"]
    assert len(create) == 1, "a capacity error must not be retried"
    assert await history(sessionmaker, instance.id) == [
        S.provisioning, S.startup_failed, S.terminating, S.terminated,
    ]  # fmt: skip
    await _nothing_left(settings)


async def test_no_ip_hits_the_boot_deadline(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, boot_timeout_s=3)
    async with running_worker(settings, temporal_client, local_providers(settings, no_ip=True)):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
    assert done.termination_reason == "boot_timeout"
    steps = {a.step: a.status for a in await actions(sessionmaker, instance.id)}
    assert steps["ip_assigned"] == "failed"
    await _nothing_left(settings)


async def test_unhealthy_instance_is_replaced_and_terminated(
    settings: Settings, sessionmaker, temporal_client, redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"health_interval_s": 0.5, "unhealthy_threshold": 2})
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        # The machine's agent dies (no heartbeat reaches an API in this test: active checks).
        local = LocalCompute(settings)
        [machine] = await local.list_tagged()
        record = json.loads((local.machines / f"{machine.resource_id}.json").read_text())
        os.killpg(record["pid"], signal.SIGKILL)

        old = await wait_state(sessionmaker, instance.id, S.terminated, timeout=60)
        assert old.termination_reason == "unhealthy"
        async with sessionmaker() as session:
            others = (
                await session.exec(select(Instance).where(col(Instance.id) != instance.id))
            ).all()
        assert len(others) == 1, "exactly one replacement"
        await wait_state(sessionmaker, others[0].id, S.ready)
        await record_history(temporal_client, instance.workflow_id, "unhealthy_replaced")
        steps = [a.step for a in await actions(sessionmaker, instance.id)]
        assert "unhealthy" in steps and "replacement" in steps
        await terminate_instance(temporal_client, others[0].workflow_id)
        await wait_state(sessionmaker, others[0].id, S.terminated)
    assert await history(sessionmaker, instance.id) == [
        S.provisioning, S.booting, S.ready, S.terminating, S.terminated,
    ]  # fmt: skip
    await _nothing_left(settings)


async def test_drain_lets_in_flight_requests_finish(
    settings: Settings, sessionmaker, temporal_client, redis_client: aioredis.Redis
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args={**SIM_FAST, "inter-token-latency-s": 0.05})
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        ready = await wait_state(sessionmaker, instance.id, S.ready)
        body = {"model": "test-model", "prompt": "tell me a story", "max_tokens": 60}
        async with httpx.AsyncClient(timeout=30) as http:
            # About 3 s of decoding: still running when the drain starts.
            request = asyncio.create_task(
                http.post(
                    f"{ready.engine_url}/v1/completions",
                    json=body,
                    headers=engine_headers(settings, instance.id),
                )
            )
            await asyncio.sleep(0.5)
            await drain_instance(temporal_client, instance.workflow_id)
            draining = await wait_state(sessionmaker, instance.id, S.draining, timeout=10)
            assert await redis_client.hget(ROUTING_REGISTRY, str(instance.id)) is None
            assert draining.state == S.draining
            response = await request
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 60
        done = await wait_state(sessionmaker, instance.id, S.terminated)
        await record_history(temporal_client, instance.workflow_id, "drain_in_flight")
    assert done.termination_reason == "user_request"
    drain = [a for a in await actions(sessionmaker, instance.id) if a.step == "drain"]
    assert drain[0].detail == "no request in flight"
    # The request finished before the machine was deleted.
    deleted = [a for a in await actions(sessionmaker, instance.id) if a.step == "delete_server"]
    assert deleted[0].started_at >= drain[0].finished_at  # type: ignore[operator]
    await _nothing_left(settings)


async def test_persistent_volumes_are_kept_others_deleted(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    volumes = [
        {"size_gb": 50, "volume_type": "data", "delete_on_terminate": True},
        {"size_gb": 200, "volume_type": "model-cache", "delete_on_terminate": False},
    ]
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args={**SIM_FAST, "volumes": volumes})
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        await terminate_instance(temporal_client, instance.workflow_id)
        await wait_state(sessionmaker, instance.id, S.terminated)
    async with sessionmaker() as session:
        rows = (await session.exec(select(InstanceVolume))).all()
    by_type = {v.volume_type: v.state for v in rows}
    assert by_type == {"boot": "deleted", "data": "deleted", "model-cache": "kept"}
    left = await LocalCompute(settings).list_tagged_volumes()
    assert [v.volume_type for v in left] == ["model-cache"]
    assert sum(a.step == "delete_volume" for a in await actions(sessionmaker, instance.id)) == 2


async def test_transient_delete_failures_are_retried(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    providers = local_providers(settings, delete_failures=2)
    async with running_worker(settings, temporal_client, providers):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        await terminate_instance(temporal_client, instance.workflow_id)
        await wait_state(sessionmaker, instance.id, S.terminated, timeout=90)
    deletes = [a for a in await actions(sessionmaker, instance.id) if a.step == "delete_server"]
    assert [a.status for a in deletes] == ["failed", "failed", "succeeded"]
    assert "injected delete failure" in (deletes[0].error or "")
    await _nothing_left(settings)


async def test_vanished_machine_becomes_provider_deleted(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    from workflows.client import ensure_reconciler
    from workflows.reconciler import reconciler_workflow_id

    settings = settings.model_copy(update={"reconcile_interval_s": 0.5})
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    providers = local_providers(settings, vanish_after_s=6)
    async with running_worker(settings, temporal_client, providers):
        await ensure_reconciler(temporal_client, settings)
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        gone = await wait_state(sessionmaker, instance.id, S.provider_deleted, timeout=30)
        assert gone.termination_reason == "provider_deleted"
        # The workflow then cleans the volumes the machine left behind.
        for _ in range(100):
            rows = [
                a for a in await actions(sessionmaker, instance.id) if a.step == "delete_volume"
            ]
            if rows and all(a.status == "succeeded" for a in rows):
                break
            await asyncio.sleep(0.2)
        await record_history(temporal_client, instance.workflow_id, "provider_deleted")
        await temporal_client.get_workflow_handle(
            reconciler_workflow_id(settings.task_queue)
        ).terminate()
    path = await history(sessionmaker, instance.id)
    assert path[-1] == S.provider_deleted and is_legal_path(path)
    await _nothing_left(settings)


async def test_orphan_removed_after_grace_period_not_before(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.contracts import ReconcileInput
    from activities.reconcile import ReconcileActivities
    from core.db import make_engine, make_sessionmaker
    from workflows.client import (
        ensure_autoscaler,
        report_provider_deleted,
        resume_instance_workflow,
    )

    local = LocalCompute(settings, LocalFaults())
    orphan = await local.create(
        CreateRequest(
            instance_id="00000000-0000-0000-0000-00000000dead",
            instance_type="local-sim-1",
            model="m",
            served_name="m",
        )
    )
    engine = make_engine(settings.require("database_url"))
    redis = aioredis.Redis.from_url(settings.require("redis_url"), decode_responses=True)
    reconcile = ReconcileActivities(
        make_sessionmaker(engine),
        redis,
        {"local": local},
        report_provider_deleted=partial(report_provider_deleted, temporal_client),
        ensure_autoscaler=partial(
            ensure_autoscaler, temporal_client, settings.task_queue, interval_s=1
        ),
        resume_instance=partial(resume_instance_workflow, temporal_client, settings.task_queue),
    )
    env = ActivityEnvironment()
    try:
        early = await env.run(reconcile.reconcile_once, ReconcileInput(1, orphan_grace_s=3600))
        assert early.orphans_deleted == []
        assert [m.resource_id for m in await local.list_tagged()] == [orphan.resource_id]
        late = await env.run(reconcile.reconcile_once, ReconcileInput(1, orphan_grace_s=0))
        assert late.orphans_deleted == [orphan.resource_id]
        assert await local.list_tagged() == []
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_fresh_heartbeat_reporting_a_dead_engine_is_unhealthy(
    settings: Settings, sessionmaker, temporal_client, redis_client: aioredis.Redis
) -> None:
    """A heartbeat spares the active check only when it says the engine serves."""
    from core.redis_keys import INSTANCE_LOAD

    settings = settings.model_copy(update={"health_interval_s": 0.5, "unhealthy_threshold": 2})
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)

        async def heartbeats() -> None:
            while True:
                load = {"instance_id": str(instance.id), "ts": time.time(),
                        "engine_ready": False, "engine_state": "crash_loop"}  # fmt: skip
                await redis_client.hset(INSTANCE_LOAD, str(instance.id), json.dumps(load))
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(heartbeats())
        try:
            done = await wait_state(sessionmaker, instance.id, S.terminated, timeout=60)
        finally:
            beating.cancel()
        assert done.termination_reason == "unhealthy"
        unhealthy = [a for a in await actions(sessionmaker, instance.id) if a.step == "unhealthy"]
        assert "crash_loop" in (unhealthy[0].detail or "")
        async with sessionmaker() as session:
            replacement = (
                await session.exec(select(Instance).where(col(Instance.id) != instance.id))
            ).one()
        await wait_state(sessionmaker, replacement.id, S.ready)
        await terminate_instance(temporal_client, replacement.workflow_id)
        await wait_state(sessionmaker, replacement.id, S.terminated)
    await _nothing_left(settings)


async def test_long_lived_instance_continues_as_new_and_still_drains(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    settings = settings.model_copy(update={"health_interval_s": 0.2, "health_rounds_per_run": 3})
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        handle = temporal_client.get_workflow_handle(instance.workflow_id)
        first_run = (await handle.describe()).run_id
        for _ in range(100):  # 3 health rounds of 0.2 s, then a new run
            if (await handle.describe()).run_id != first_run:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the workflow never continued as new")
        status = await handle.query(InstanceWorkflow.status)
        assert status.phase == "ready" and status.resource_id, "state carried over"
        await drain_instance(temporal_client, instance.workflow_id)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
    assert done.termination_reason == "user_request"
    await _nothing_left(settings)


async def test_wrong_agent_is_flagged_or_refused(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    pinned = settings.model_copy(update={"expected_agent_version": "9.9.9"})
    async with running_worker(pinned, temporal_client):
        flagged = await provision(sessionmaker, temporal_client, pinned, seeded.deployment)
        ready = await wait_state(sessionmaker, flagged.id, S.ready)
        assert ready.agent_integrity_ok is False
        check = [a for a in await actions(sessionmaker, flagged.id) if a.step == "health_check"]
        assert "agent mismatch" in (check[0].detail or "") and "9.9.9" in (check[0].detail or "")
        await terminate_instance(temporal_client, flagged.workflow_id)
        await wait_state(sessionmaker, flagged.id, S.terminated)

    blocking = pinned.model_copy(update={"block_on_agent_mismatch": True})
    async with running_worker(blocking, temporal_client):
        refused = await provision(sessionmaker, temporal_client, blocking, seeded.deployment)
        done = await wait_state(sessionmaker, refused.id, S.terminated)
    assert done.termination_reason == "startup_error" and "agent mismatch" in (done.error or "")
    assert S.ready not in await history(sessionmaker, refused.id)
    await _nothing_left(settings)


async def test_terminated_instance_is_archived_after_retention(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    settings = settings.model_copy(update={"archive_after_s": 0.5})
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    async with running_worker(settings, temporal_client):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.ready)
        handle = temporal_client.get_workflow_handle(instance.workflow_id)
        await terminate_instance(temporal_client, instance.workflow_id)
        await wait_state(sessionmaker, instance.id, S.archived)
        assert await handle.result() == "user_request"
    assert (await history(sessionmaker, instance.id))[-2:] == [S.terminated, S.archived]
