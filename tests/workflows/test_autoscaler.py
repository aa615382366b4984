"""The autoscaler against real Temporal, PostgreSQL and Redis: load in, instances out."""

from __future__ import annotations

import asyncio
import json
import time

from sqlmodel import col, select

from core.models import Deployment, Instance, InstanceState
from core.redis_keys import EVENTS_STREAM, gateway_load_key
from core.settings import Settings
from tests.factories import seed
from tests.workflows.helpers import running_worker, wait_state
from workflows.autoscaler import autoscaler_workflow_id
from workflows.client import ensure_autoscaler, terminate_instance

S = InstanceState


async def count(sessionmaker, deployment_id, states) -> int:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        rows = await session.exec(
            select(Instance).where(
                Instance.deployment_id == deployment_id, col(Instance.state).in_(states)
            )
        )
        return len(rows.all())


async def until(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.3)
    raise AssertionError("condition not met in time")


async def test_scales_up_under_load_and_down_when_idle(
    settings: Settings, sessionmaker, temporal_client, redis_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args={"model-load-delay-s": 0.2})
        deployment = await session.get(Deployment, seeded.deployment.id)
        assert deployment is not None
        deployment.autoscaling_enabled = True
        deployment.min_instances, deployment.max_instances = 1, 3
        deployment.autoscaling = {
            "target_in_flight_per_instance": 4,
            "scale_up_cooldown_s": 0,
            "scale_down_cooldown_s": 0,
        }
        session.add(deployment)
        await session.commit()
    dep_id = seeded.deployment.id

    async def publish_load(in_flight: int) -> None:
        load = {"ts": time.time(), "replica_id": "test", "model": "test-model",
                "queue_length": 0, "queue_wait_p50_ms": 0, "queue_wait_p95_ms": 0,
                "in_flight": in_flight, "arrival_rate_per_s": 1}  # fmt: skip
        await redis_client.hset(gateway_load_key(str(dep_id)), "test", json.dumps(load))

    async with running_worker(settings, temporal_client):
        await ensure_autoscaler(temporal_client, settings.task_queue, dep_id, interval_s=0.5)

        async def ready(n: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                await publish_load(current_load)
                return await count(sessionmaker, dep_id, [S.ready]) == n

            return check

        current_load = 0
        await until(await ready(1))  # the minimum
        current_load = 10  # ceil(10 / 4) = 3 instances wanted
        await until(await ready(3))
        current_load = 0  # idle: back down to the minimum, one drain at a time
        await until(await ready(1))
        assert await count(sessionmaker, dep_id, [S.provisioning, S.booting]) == 0
        async with sessionmaker() as session:
            drained = (
                await session.exec(
                    select(Instance).where(Instance.termination_reason == "scale_down")
                )
            ).all()
        assert len(drained) == 2
        events = await redis_client.xrange(EVENTS_STREAM)
        kinds = [json.loads(fields["event"])["kind"] for _, fields in events]
        assert kinds.count("scaling") >= 3

        # Turning autoscaling off ends the autoscaler.
        async with sessionmaker() as session:
            deployment = await session.get(Deployment, dep_id)
            assert deployment is not None
            deployment.autoscaling_enabled = False
            session.add(deployment)
            await session.commit()
        result = await temporal_client.get_workflow_handle(
            autoscaler_workflow_id(str(dep_id))
        ).result()
        assert result == "autoscaling turned off"
        live = await _live(sessionmaker, dep_id)
        for inst in live:
            await terminate_instance(temporal_client, inst.workflow_id)
        for inst in live:
            await wait_state(sessionmaker, inst.id, S.terminated)


async def _live(sessionmaker, dep_id):  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        rows = await session.exec(
            select(Instance).where(
                Instance.deployment_id == dep_id, col(Instance.state).in_([S.ready, S.booting])
            )
        )
        return rows.all()
