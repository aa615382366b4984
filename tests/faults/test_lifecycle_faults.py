"""The fault matrix: instance lifecycles driven through the API while a real dependency fails.

Each case checks afterwards what a user and an operator would: every instance reached its
intended end state, the provider holds exactly the live instances' machines and volumes, every
state history is a legal path, nothing is left flagged as needing attention, and no API answer
was a 500 (503s while the dependency is down are expected and retried as a client would).

Durations: a freeze is FREEZE_S (5 s) of SIGSTOP with the API's and the worker's dependency
timeouts shortened to 1 s (tests/faults/conftest.py); a restart is the real server stopped and
started again (PostgreSQL `pg_ctl restart -m fast`, Redis on its append-only file, a dedicated
Temporal dev server on its SQLite file).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlmodel import select
from temporalio.client import Client

from activities.providers.local.adapter import LocalCompute
from core.embedded import EmbeddedTemporal, free_port
from core.instances import new_instance, workflow_id_for
from core.models import Instance, InstanceState, InstanceVolume
from core.settings import Settings
from core.states import is_legal_path
from tests.agent.helpers import serving
from tests.api.conftest import Tenant, make_tenant
from tests.conftest import Stack
from tests.factories import seed
from tests.faults.conftest import answered
from tests.workflows.helpers import actions, history, local_providers, running_worker, wait_state
from workflows.client import create_instance, ensure_reconciler, terminate_instance
from workflows.reconciler import ReconcilerWorkflow, reconciler_workflow_id

S = InstanceState
FREEZE_S = 5
ENGINE_ARGS = {
    "model-load-delay-s": 0.2,
    "volumes": [{"size_gb": 1, "delete_on_terminate": True}],
}


class Api:
    """The tenant's calls to the API, every answer recorded (none may be a 500)."""

    def __init__(self, client: httpx.AsyncClient, tenant: Tenant) -> None:
        self.client = client
        self.tenant = tenant
        self.answers: list[tuple[str, int]] = []

    async def call(self, method: str, path: str) -> httpx.Response:
        response = await answered(
            self.client.request(method, f"/api/v1{path}", headers=self.tenant.headers)
        )
        self.answers.append((f"{method} {path}", response.status_code))
        return response

    async def until_available(self, method: str, path: str) -> httpx.Response:
        for _ in range(60):
            response = await self.call(method, path)
            if response.status_code != 503:
                return response
            await asyncio.sleep(int(response.headers["Retry-After"]))
        raise AssertionError(f"{method} {path} still 503 after 60 tries")

    async def create(self) -> uuid.UUID:
        path = f"/deployments/{self.tenant.deployment.id}/instances"
        response = await self.until_available("POST", path)
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    async def delete(self, instance_id: uuid.UUID) -> None:
        response = await self.until_available("DELETE", f"/instances/{instance_id}")
        # 409 "already terminating": a DELETE whose answer was a 503 was carried out anyway.
        assert response.status_code == 202 or "already" in response.text, response.text

    async def poke(self, instance_id: uuid.UUID, seconds: float) -> None:
        """Read the instance every half second, as a dashboard open on it would."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.call("GET", f"/instances/{instance_id}")
            await asyncio.sleep(0.5)

    def assert_no_500(self) -> None:
        errors = [a for a in self.answers if a[1] >= 500 and a[1] != 503]
        assert not errors, errors
        assert self.answers, "the API was called"


async def assert_provider_matches(
    settings: Settings, sessionmaker: Any, instances: list[uuid.UUID], live: set[uuid.UUID]
) -> None:
    """The provider holds exactly the live instances' machines and volumes, each history is a
    legal path, and nothing needs attention."""
    local = LocalCompute(settings)
    machines = await local.list_tagged()
    assert sorted(m.instance_id for m in machines) == sorted(map(str, live)), machines
    volumes = await local.list_tagged_volumes()
    async with sessionmaker() as session:
        attached = {
            v.provider_volume_id
            for v in (await session.exec(select(InstanceVolume))).all()
            if v.state == "attached"
        }
        rows = (await session.exec(select(Instance))).all()
    assert {v.volume_id for v in volumes} == attached
    assert {v.instance_id for v in volumes} <= set(map(str, live))
    assert {r.id for r in rows} == set(instances), "no orphan row, no duplicate"
    for row in rows:
        assert row.attention is None, row.attention
        path = await history(sessionmaker, row.id)
        assert is_legal_path(path), path


# ---------------------------------------------------------------- PostgreSQL and Redis

PHASES = ("provisioning", "draining", "terminating")
CASES = [
    (part, fault, phase)
    for part in ("postgres", "redis")
    for fault in ("freeze", "restart")
    for phase in PHASES
]


@pytest.fixture
async def tenant(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    return await make_tenant(client, sessionmaker, engine_args=ENGINE_ARGS)


@pytest.mark.parametrize(("part", "fault", "phase"), CASES, ids=["-".join(c) for c in CASES])
async def test_dependency_fault_during_lifecycle(
    part: str,
    fault: str,
    phase: str,
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
    stack: Stack,
) -> None:
    server = stack.servers.get(part)
    if server is None:
        pytest.skip(f"{part} is an external server: it cannot be frozen or restarted")
    api = Api(client, tenant)

    async def outage(instance_id: uuid.UUID) -> None:
        if fault == "freeze":
            with server.paused():
                await api.poke(instance_id, FREEZE_S)
        else:
            restart = asyncio.create_task(asyncio.to_thread(server.restart))  # type: ignore[union-attr]
            await api.poke(instance_id, 1)
            await restart

    async with running_worker(settings, temporal_client, local_providers(settings)):
        instance_id = await api.create()
        if phase == "provisioning":
            await outage(instance_id)
            await wait_state(sessionmaker, instance_id, S.ready, timeout=90)
            await api.delete(instance_id)
        else:
            await wait_state(sessionmaker, instance_id, S.ready, timeout=60)
            await api.delete(instance_id)
            if phase == "terminating":
                await wait_state(sessionmaker, instance_id, {S.terminating, S.terminated})
            await outage(instance_id)
        await wait_state(sessionmaker, instance_id, S.terminated, timeout=90)
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


# ---------------------------------------------------------------- the provider and the engine


async def test_volume_delete_failing_flags_attention_then_finishes(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
) -> None:
    """Each delete (machine and volumes) fails 4 times: the action log says "retrying", the
    instance needs attention with the ids left behind, then termination finishes by itself."""
    settings = settings.model_copy(
        update={"cleanup_attention_after_attempts": 3, "cleanup_max_interval_s": 2}
    )
    api = Api(client, tenant)
    providers = local_providers(settings, delete_failures=4)
    async with running_worker(settings, temporal_client, providers):
        instance_id = await api.create()
        await wait_state(sessionmaker, instance_id, S.ready)
        await api.delete(instance_id)
        seen: dict[str, Any] | None = None
        for _ in range(200):
            detail = (await api.call("GET", f"/instances/{instance_id}")).json()
            seen = seen or detail["attention"]
            if detail["state"] == S.terminated:
                break
            await asyncio.sleep(0.2)
        assert detail["state"] == S.terminated, detail
    assert seen is not None, "the instance was never flagged while its deletes failed"
    assert seen["leaked"] and "retries every" in seen["hint"], seen
    log = await actions(sessionmaker, instance_id)
    retrying = [a.error for a in log if a.error and a.error.startswith("retrying (attempt")]
    assert len(retrying) >= 4, retrying
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


def agent_without_load_metrics() -> AbstractAsyncContextManager[str]:
    """An agent's /load as it answers for an engine whose /metrics lacks vllm:num_requests_*."""
    app = FastAPI()

    @app.get("/load")
    async def load() -> dict[str, Any]:
        return {"in_flight": None, "engine_metrics_read": True}

    return serving(app)


async def test_engine_without_load_metrics_drains_to_deadline_then_terminates(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
) -> None:
    settings = settings.model_copy(update={"drain_timeout_s": 2})
    api = Api(client, tenant)
    async with running_worker(settings, temporal_client), agent_without_load_metrics() as url:
        instance_id = await api.create()
        await wait_state(sessionmaker, instance_id, S.ready)
        async with sessionmaker() as session:
            await session.execute(
                update(Instance).where(Instance.id == instance_id).values(agent_url=url)  # type: ignore[arg-type]
            )
            await session.commit()
        await api.delete(instance_id)
        await wait_state(sessionmaker, instance_id, S.terminated, timeout=60)
    [drain] = [a for a in await actions(sessionmaker, instance_id) if a.step == "drain"]
    assert drain.status == "succeeded" and "load unknown" in (drain.detail or ""), drain
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


# ---------------------------------------------------------------- Temporal restarted


async def test_temporal_restarted_mid_lifecycle(
    settings: Settings, sessionmaker: Any, tmp_path: Path
) -> None:
    """A dedicated dev server on a SQLite file (the session's shared one keeps no state), restarted
    while an instance boots and again while another terminates: both lifecycles carry on."""
    temporal = EmbeddedTemporal(db_file=tmp_path / "temporal.db", port=free_port(), ui_port=None)
    address = temporal.start()
    settings = settings.model_copy(update={"temporal_address": address})
    try:
        client = await Client.connect(address, namespace="default")
        async with sessionmaker() as session:
            seeded = await seed(session, engine_args=ENGINE_ARGS)
            seeded.deployment.max_instances = 2
            session.add(seeded.deployment)
            await session.commit()
        async with running_worker(settings, client, local_providers(settings)):
            async with sessionmaker() as session:
                first = await create_instance(
                    session, client, settings.task_queue, deployment=seeded.deployment
                )
            await wait_state(sessionmaker, first.id, {S.booting, S.ready})
            await asyncio.to_thread(temporal.restart)
            await wait_state(sessionmaker, first.id, S.ready, timeout=90)
            async with sessionmaker() as session:
                second = await create_instance(
                    session, client, settings.task_queue, deployment=seeded.deployment
                )
            await wait_state(sessionmaker, second.id, S.ready, timeout=90)
            await terminate_instance(client, second.workflow_id)
            await wait_state(sessionmaker, second.id, {S.terminating, S.terminated})
            await asyncio.to_thread(temporal.restart)
            await wait_state(sessionmaker, second.id, S.terminated, timeout=90)
            await assert_provider_matches(settings, sessionmaker, [first.id, second.id], {first.id})
            await _with_retries(lambda: terminate_instance(client, first.workflow_id))
            await wait_state(sessionmaker, first.id, S.terminated, timeout=90)
        await assert_provider_matches(settings, sessionmaker, [first.id, second.id], set())
    finally:
        temporal.stop()


async def _with_retries(call: Callable[[], Awaitable[None]]) -> None:
    """A command sent while the restarted server's workers reconnect may time out: resend."""
    for _ in range(10):
        try:
            await call()
            return
        except Exception:
            await asyncio.sleep(1)
    await call()


# ---------------------------------------------------------------- the provider's API

PROVIDER_OUTAGE_S = 20


async def test_provider_api_answering_5xx_during_provisioning_and_termination(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
) -> None:
    """Every provider call fails as a 503 for PROVIDER_OUTAGE_S from the first one (standing in
    for minutes): once while the instance is created, once, on a fresh worker, while it is
    deleted. Both carry on when the provider answers again."""
    settings = settings.model_copy(
        update={"boot_timeout_s": PROVIDER_OUTAGE_S + 60, "cleanup_max_interval_s": 2}
    )
    api = Api(client, tenant)
    outage = local_providers(settings, api_outage_s=PROVIDER_OUTAGE_S)
    started = time.monotonic()
    async with running_worker(settings, temporal_client, outage):
        instance_id = await api.create()
        await wait_state(sessionmaker, instance_id, S.ready, timeout=PROVIDER_OUTAGE_S + 60)
    assert time.monotonic() - started >= PROVIDER_OUTAGE_S
    outage = local_providers(settings, api_outage_s=PROVIDER_OUTAGE_S)
    async with running_worker(settings, temporal_client, outage):
        await api.delete(instance_id)
        await wait_state(sessionmaker, instance_id, S.terminated, timeout=PROVIDER_OUTAGE_S + 60)
    log = await actions(sessionmaker, instance_id)
    refused = {a.step for a in log if a.error and "503 Service Unavailable" in a.error}
    assert "provider_create" in refused, [(a.step, a.error) for a in log]
    assert refused - {"provider_create"}, "some cleanup step met the outage and retried"
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


async def test_new_machine_not_found_for_a_while_is_not_provider_deleted(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
) -> None:
    """The provider does not find a new machine for 20 s (absent from listings, "not found yet"
    when asked for it), as AWS after RunInstances, while the reconciler runs every 2 s with a
    1 s missing grace: the boot waits for it, the reconciler leaves it alone, it ends ready."""
    api = Api(client, tenant)
    providers = local_providers(settings, not_found_for_s=20)
    async with running_worker(settings, temporal_client, providers):
        await ensure_reconciler(temporal_client, settings)
        reconciler = temporal_client.get_workflow_handle(
            reconciler_workflow_id(settings.task_queue)
        )
        try:
            instance_id = await api.create()
            seen_missing = False
            deadline = time.monotonic() + 90
            while (await wait_state(sessionmaker, instance_id, set(S))).state != S.ready:
                assert time.monotonic() < deadline, "not ready within 90 s"
                last = await reconciler.query(ReconcilerWorkflow.last_result)
                seen_missing = seen_missing or bool(last.missing_since)
                await asyncio.sleep(0.5)
            assert seen_missing, "a reconciler round saw the machine missing from its listing"
            await api.delete(instance_id)
            await wait_state(sessionmaker, instance_id, S.terminated, timeout=60)
        finally:
            await reconciler.terminate()
    log = await actions(sessionmaker, instance_id)
    assert any(a.error and "not found yet" in a.error for a in log), log
    assert "provider_deleted" not in await history(sessionmaker, instance_id)
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


async def test_capacity_lost_after_launch_fails_fast_as_no_capacity(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Client,
) -> None:
    """The provider takes the machine back at power-on for lack of capacity: the instance fails
    at once (not at its 60 s boot deadline) with the provider's reason, and nothing is left."""
    api = Api(client, tenant)
    providers = local_providers(settings, capacity_lost_at_start=True)
    async with running_worker(settings, temporal_client, providers):
        started = time.monotonic()
        instance_id = await api.create()
        failed = await wait_state(
            sessionmaker, instance_id, {S.startup_failed, S.terminating, S.terminated}
        )
        assert time.monotonic() - started < 20, "failed fast, not at the boot deadline"
        await wait_state(sessionmaker, instance_id, S.terminated, timeout=60)
    assert failed.termination_reason == "startup_error"
    assert "InsufficientInstanceCapacity" in (failed.error or ""), failed.error
    assert S.startup_failed in await history(sessionmaker, instance_id)
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
    api.assert_no_500()


# ---------------------------------------------------------------- a row without its workflow


async def test_reconciler_starts_the_workflow_of_a_row_left_in_provisioning(
    tenant: Tenant, sessionmaker: Any, settings: Settings, temporal_client: Client
) -> None:
    """A row committed whose workflow was never started (the autoscaler's or a replacement's
    activity lost between its commit and its start): the reconciler starts it, once."""
    async with sessionmaker() as session:
        row = new_instance(tenant.deployment, uuid.uuid4())
        session.add(row)
        await session.commit()
        instance_id = row.id
    async with running_worker(settings, temporal_client):
        await ensure_reconciler(temporal_client, settings)
        reconciler = temporal_client.get_workflow_handle(
            reconciler_workflow_id(settings.task_queue)
        )
        try:
            await wait_state(sessionmaker, instance_id, S.ready, timeout=60)
        finally:
            await reconciler.terminate()
        resumed = [
            a for a in await actions(sessionmaker, instance_id) if a.step == "workflow_resumed"
        ]
        assert len(resumed) == 1, resumed
        await terminate_instance(temporal_client, workflow_id_for(instance_id))
        await wait_state(sessionmaker, instance_id, S.terminated, timeout=60)
    await assert_provider_matches(settings, sessionmaker, [instance_id], live=set())
