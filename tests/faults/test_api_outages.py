"""The API while PostgreSQL, Redis or Temporal is frozen: a prompt 503 naming what is down, with
Retry-After, never a 500 or a hang; once the dependency is back, the same calls work, and a
command retried after its 503 is carried out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from core.events import publish_event
from core.models import InstanceState
from core.redis_keys import EVENTS_STREAM
from core.settings import Settings
from tests.agent.helpers import serving
from tests.api.conftest import Tenant, make_tenant
from tests.api.test_events import listen
from tests.faults.conftest import Freeze, answered, assert_unavailable, until_available
from tests.workflows.helpers import running_worker, wait_state

S = InstanceState


@pytest.fixture
async def tenant(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    return await make_tenant(client, sessionmaker, engine_args={"model-load-delay-s": 0.2})


@pytest.fixture
async def ready_instance(
    client: httpx.AsyncClient,
    tenant: Tenant,
    sessionmaker: Any,
    settings: Settings,
    temporal_client: Any,
) -> AsyncIterator[uuid.UUID]:
    """A ready instance of the tenant's deployment, its workflow run by a worker."""
    async with running_worker(settings, temporal_client):
        response = await client.post(
            f"/api/v1/deployments/{tenant.deployment.id}/instances", headers=tenant.headers
        )
        assert response.status_code == 202, response.text
        instance_id = uuid.UUID(response.json()["id"])
        await wait_state(sessionmaker, instance_id, S.ready)
        yield instance_id


async def delete_until_accepted(
    client: httpx.AsyncClient, tenant: Tenant, instance_id: uuid.UUID
) -> None:
    """DELETE as a client retrying its 503s does; the instance then reaches terminated."""
    response = await until_available(
        lambda: client.delete(f"/api/v1/instances/{instance_id}", headers=tenant.headers)
    )
    # 202; or 409 "already terminating" / "already terminated" when the command sent during the
    # outage got through after all.
    assert response.status_code == 202 or (
        response.status_code == 409 and "already terminat" in response.text
    ), response.text


async def test_database_frozen_answers_503_then_works(
    client: httpx.AsyncClient,
    tenant: Tenant,
    ready_instance: uuid.UUID,
    sessionmaker: Any,
    freeze: Freeze,
) -> None:
    instance = f"/api/v1/instances/{ready_instance}"
    with freeze("postgres"):
        listed = await answered(client.get("/api/v1/instances", headers=tenant.headers))
        deleted = await answered(client.delete(instance, headers=tenant.headers))
    assert_unavailable(listed, "database")
    assert_unavailable(deleted, "database")

    listed = await until_available(lambda: client.get("/api/v1/instances", headers=tenant.headers))
    assert listed.status_code == 200
    assert [i["state"] for i in listed.json()["items"]] == ["ready"]
    await delete_until_accepted(client, tenant, ready_instance)
    await wait_state(sessionmaker, ready_instance, S.terminated)


async def test_redis_frozen_answers_503_then_works(
    client: httpx.AsyncClient,
    tenant: Tenant,
    ready_instance: uuid.UUID,
    sessionmaker: Any,
    freeze: Freeze,
) -> None:
    credentials = {"email": tenant.user.email, "password": tenant.password}
    with freeze("redis"):
        login = await answered(client.post("/api/v1/auth/login", json=credentials))
        listed = await answered(client.get("/api/v1/instances", headers=tenant.headers))
        deleted = await answered(
            client.delete(f"/api/v1/instances/{ready_instance}", headers=tenant.headers)
        )
    for response in (login, listed, deleted):
        assert_unavailable(response, "redis")

    login = await until_available(lambda: client.post("/api/v1/auth/login", json=credentials))
    assert login.status_code == 200, login.text
    client.cookies.clear()
    listed = await client.get("/api/v1/instances", headers=tenant.headers)
    assert listed.status_code == 200
    await delete_until_accepted(client, tenant, ready_instance)
    await wait_state(sessionmaker, ready_instance, S.terminated)


async def test_temporal_frozen_commands_answer_503_and_a_retry_is_carried_out(
    client: httpx.AsyncClient,
    tenant: Tenant,
    ready_instance: uuid.UUID,
    sessionmaker: Any,
    freeze: Freeze,
) -> None:
    instance = f"/api/v1/instances/{ready_instance}"
    with freeze("temporal"):
        # Reads need only the database: they go on.
        listed = await answered(client.get("/api/v1/instances", headers=tenant.headers))
        drained = await answered(client.post(f"{instance}/drain", headers=tenant.headers))
        deleted = await answered(client.delete(instance, headers=tenant.headers))
    assert listed.status_code == 200, listed.text
    assert_unavailable(drained, "temporal")
    assert_unavailable(deleted, "temporal")

    await delete_until_accepted(client, tenant, ready_instance)
    done = await wait_state(sessionmaker, ready_instance, S.terminated)
    assert done.termination_reason == "user_request"


async def test_events_are_best_effort_while_redis_is_frozen(
    redis_client: aioredis.Redis, app: Any, freeze: Freeze
) -> None:
    project = str(uuid.uuid4())
    with freeze("redis"):
        lost = await answered(publish_event(app.state.redis, "instance", project, {"n": 1}))
    assert lost is None, "an event published while Redis is down is dropped, not an error"

    kept = await answered(publish_event(app.state.redis, "instance", project, {"n": 2}))
    assert kept is not None
    entries = await redis_client.xrange(EVENTS_STREAM)
    assert [fields["event"].count('"n": 2') for _id, fields in entries] == [1]


async def test_an_open_event_stream_outlives_a_redis_freeze(
    settings: Settings, tenant: Tenant, redis_client: aioredis.Redis, freeze: Freeze
) -> None:
    async with (
        serving(create_app(settings, sse_keepalive_s=0.3)) as base,
        listen(base, tenant) as listener,
    ):
        with freeze("redis"):
            await asyncio.sleep(3)  # the stream's reads time out meanwhile
        await publish_event(redis_client, "instance", str(tenant.project.id), {"n": 1})
        event = await answered(listener.next_event())
    assert event["data"]["data"] == {"n": 1}
    assert ": redis unavailable, retrying" in listener.comments
