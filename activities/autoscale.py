"""Autoscaler activities: read the load, apply the policy (core/autoscaling.py), act on it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.contracts import AssessInput, ScaleDownInput, ScaleUpInput, ScalingPlan
from activities.instance import StartInstance
from core.autoscaling import AutoscalingPolicy, LoadSnapshot, decide
from core.events import EventKind, publish_event
from core.instances import new_instance
from core.models import Deployment, Instance, InstanceState, TerminationReason
from core.quotas import QuotaExceeded, check_and_reserve
from core.redis_keys import INSTANCE_LOAD, gateway_load_key
from core.wire import GatewayLoad, InstanceLoad

# Asks an instance's workflow to drain; False when it refused or has ended. The worker passes one
# built on workflows/client.py (activities never import workflows).
DrainInstance = Callable[[str, TerminationReason], Awaitable[bool]]

# A gateway replica that has not published for this long has stopped: its figures are ignored.
GATEWAY_LOAD_STALE_S = 10.0
STARTING = (InstanceState.provisioning, InstanceState.booting)


class AutoscaleActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        start_instance: StartInstance,
        drain_instance: DrainInstance,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.start_instance = start_instance
        self.drain_instance = drain_instance

    async def _gateway_load(self, deployment_id: str, now: float) -> tuple[float, float, float]:
        """(in flight, queue length, worst queue wait p95) summed over live gateway replicas."""
        in_flight = queue = wait = 0.0
        for raw in (await self.redis.hgetall(gateway_load_key(deployment_id))).values():
            load = GatewayLoad.model_validate_json(raw)
            if now - load.ts > GATEWAY_LOAD_STALE_S:
                continue
            in_flight += load.in_flight
            queue += load.queue_length
            wait = max(wait, load.queue_wait_p95_ms)
        return in_flight, queue, wait

    @activity.defn
    async def assess(self, inp: AssessInput) -> ScalingPlan:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(inp.deployment_id))
            if deployment is None or not deployment.autoscaling_enabled:
                return ScalingPlan(enabled=False, delta=0, reason="autoscaling off")
            instances = (
                await session.exec(
                    select(Instance).where(
                        Instance.deployment_id == deployment.id,
                        col(Instance.state).in_([*STARTING, InstanceState.ready]),
                    )
                )
            ).all()
        ready = [i for i in instances if i.state == InstanceState.ready]
        in_flight, queue, wait = await self._gateway_load(inp.deployment_id, inp.now)
        policy = AutoscalingPolicy.from_deployment(
            deployment.min_instances, deployment.max_instances, deployment.autoscaling
        )
        load = LoadSnapshot(
            ready=len(ready),
            starting=len(instances) - len(ready),
            in_flight=in_flight,
            queue_length=queue,
            queue_wait_p95_ms=wait,
        )
        decision = decide(
            policy,
            load,
            since_scale_up_s=inp.now - inp.last_scale_up,
            since_scale_down_s=inp.now - inp.last_scale_down,
        )
        drain: list[str] = []
        if decision.delta < 0:
            drain = await self._least_loaded(ready, -decision.delta)
        return ScalingPlan(True, decision.delta, decision.reason, drain)

    async def _least_loaded(self, ready: list[Instance], count: int) -> list[str]:
        """The instances with the fewest requests running (newest first on ties)."""
        raw = await self.redis.hmget(INSTANCE_LOAD, [str(i.id) for i in ready]) if ready else []

        def running(pair: tuple[Instance, bytes | str | None]) -> tuple[float, float]:
            instance, raw_load = pair
            load = InstanceLoad.model_validate_json(raw_load) if raw_load else None
            value = (load.requests_running or 0.0) if load else 0.0
            return value, -instance.created_at.timestamp()

        ordered = sorted(zip(ready, raw, strict=True), key=running)
        return [str(i.id) for i, _ in ordered[:count]]

    @activity.defn
    async def scale_up(self, inp: ScaleUpInput) -> None:
        """Create the instances (ids chosen by the workflow: a retry creates nothing twice)."""
        created: list[uuid.UUID] = []
        refused = ""
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(inp.deployment_id))
            if deployment is None:
                return
            for new_id in map(uuid.UUID, inp.new_instance_ids):
                if await session.get(Instance, new_id) is None:
                    try:  # the project's quota, checked with its row locked
                        await check_and_reserve(session, deployment)
                    except QuotaExceeded as exc:
                        refused = f"; held back by quota: {exc.reason}"
                        break
                    session.add(new_instance(deployment, new_id))
                created.append(new_id)
            await session.commit()
        for new_id in created:
            await self.start_instance(new_id)
        await self._decision_event(deployment, f"+{len(created)}", inp.reason + refused)

    @activity.defn
    async def scale_down(self, inp: ScaleDownInput) -> None:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(inp.deployment_id))
            rows = (
                await session.exec(
                    select(Instance).where(
                        col(Instance.id).in_([uuid.UUID(i) for i in inp.instance_ids])
                    )
                )
            ).all()
        drained = 0
        for instance in rows:
            # The workflow decides: one that stopped being ready meanwhile refuses the drain.
            if await self.drain_instance(instance.workflow_id, TerminationReason.scale_down):
                drained += 1
        if deployment is not None:
            await self._decision_event(deployment, f"-{drained}", inp.reason)

    async def _decision_event(self, deployment: Deployment, change: str, reason: str) -> None:
        await publish_event(
            self.redis,
            EventKind.scaling,
            str(deployment.project_id),
            {
                "deployment_id": str(deployment.id),
                "change": change,
                "reason": reason,
                "at": time.time(),
            },
        )
