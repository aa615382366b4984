"""Readings older than what they are judged against (real PostgreSQL and Redis): the heartbeat
the agent sent while the engine was still starting, read by the health check once the instance
is ready; and the autoscaler's sample taken before a gateway replica first reported."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis
from temporalio.testing import ActivityEnvironment

from activities.autoscale import AutoscaleActivities
from activities.contracts import HealthInput
from activities.instance.context import InstanceContext
from activities.instance.health import HealthActivities
from core.models import Instance, InstanceState
from core.redis_keys import INSTANCE_LOAD, gateway_load_key, gateway_samples_key
from core.settings import Settings
from core.wire import GatewayLoad
from tests.factories import seed


def _agent(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ready": True})


async def test_a_heartbeat_from_before_readiness_leaves_the_check_to_the_agent(
    settings: Settings, sessionmaker: Any, redis_client: aioredis.Redis
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session)
        ready_at = time.time()
        instance = Instance(
            deployment_id=seeded.deployment.id,
            project_id=seeded.project.id,
            provider_id=seeded.provider.id,
            instance_type_id=seeded.instance_type.id,
            workflow_id=f"instance-{uuid.uuid4()}",
            state=InstanceState.ready,
            ready_at=datetime.fromtimestamp(ready_at, UTC),
            agent_url="http://agent.test",
        )
        session.add(instance)
        await session.commit()
        await session.refresh(instance)
    ctx = InstanceContext(settings, sessionmaker, redis_client, {})
    await ctx.http.aclose()
    ctx.http = httpx.AsyncClient(transport=httpx.MockTransport(_agent))

    async def no_start(_: uuid.UUID) -> None:
        raise AssertionError("nothing to start")

    health = HealthActivities(ctx, no_start)

    async def heartbeat_at(ts: float) -> Any:
        load = {"instance_id": str(instance.id), "ts": ts,
                "engine_ready": False, "engine_state": "starting"}  # fmt: skip
        await redis_client.hset(INSTANCE_LOAD, str(instance.id), json.dumps(load))
        return await ActivityEnvironment().run(health.check_health, HealthInput(str(instance.id)))

    try:
        # Sent while the engine was starting, before the boot found it ready: the agent decides.
        boot = await heartbeat_at(ready_at - 1)
        assert boot.healthy and boot.detail == "agent ready"
        # Sent after: the agent says the engine stopped serving.
        later = await heartbeat_at(ready_at + 1)
        assert not later.healthy and later.detail == "agent reports the engine starting"
    finally:
        await redis_client.hdel(INSTANCE_LOAD, str(instance.id))
        await ctx.close()


def _load(replica: str, started_at: float, ts: float, arrivals: int) -> GatewayLoad:
    return GatewayLoad(
        ts=ts,
        period_s=0.5,
        started_at=started_at,
        replica_id=replica,
        model="m",
        queue_length=0,
        in_flight=arrivals,
        arrivals_total=arrivals,
        active_request_s_total=float(arrivals),
    )


async def test_a_replica_gets_its_own_baseline_when_the_window_ago_sample_lacks_it(
    sessionmaker: Any, redis_client: aioredis.Redis
) -> None:
    """The autoscaler's first sample came before the gateway published the deployment; a
    second later it reports, and a second after that six requests have arrived: the window is
    measured from its first report (rates), not taken as a replica never seen (no rates)."""

    async def unused(*_: Any) -> Any:
        raise AssertionError("not called")

    activities = AutoscaleActivities(sessionmaker, redis_client, unused, unused, providers={})
    deployment_id = str(uuid.uuid4())
    key = gateway_load_key(deployment_id)
    t0 = time.time()
    try:
        empty = await activities._gateway_window(deployment_id, t0, 5)
        assert empty.active_requests == 0 and empty.arrival_rate_rps == 0
        await redis_client.hset(key, "gw-1", _load("gw-1", t0, t0 + 1, 0).model_dump_json())
        first = await activities._gateway_window(deployment_id, t0 + 1, 5)
        assert first.arrival_rate_rps == 0 and first.span_s == 0  # seen for the first time
        await redis_client.hset(key, "gw-1", _load("gw-1", t0, t0 + 2, 6).model_dump_json())
        window = await activities._gateway_window(deployment_id, t0 + 2, 5)
        assert window.span_s == 1
        assert window.arrival_rate_rps == 6
    finally:
        await redis_client.delete(key, gateway_samples_key(deployment_id))
