"""Autoscaler activities: read the load, apply the policy (core/autoscaling.py), act on it.

Every round is one `scaling_decisions` row whose id the workflow chose: `assess` stores it with
what it read (a retry after a worker crash returns the stored decision instead of taking a
second one), `scale_up` and `scale_down` write what acting on it did. Each is published on the
live event stream (kind `scaling`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.contracts import AssessInput, ScaleDownInput, ScaleUpInput, ScalingPlan
from activities.instance import StartInstance
from activities.providers.base import CapacityMixin, Compute
from core.autoscaling import (
    AutoscalingConfig,
    InstanceLoad,
    PolicyState,
    Signals,
    evaluate,
    within_capacity,
)
from core.events import EventKind, publish_event
from core.instances import new_instance
from core.load_window import GatewayWindow, gateway_window, live_reports
from core.models import (
    Deployment,
    Instance,
    InstanceMetric,
    InstanceState,
    InstanceType,
    Provider,
    ScalingAction,
    ScalingDecision,
    TerminationReason,
)
from core.quotas import QuotaExceeded, check_and_reserve
from core.redis_keys import INSTANCE_LOAD, gateway_load_key, gateway_samples_key
from core.wire import GatewayLoad
from core.wire import InstanceLoad as HeartbeatLoad

# Asks an instance's workflow to drain; False when it refused or has ended. The worker passes one
# built on workflows/client.py (activities never import workflows).
DrainInstance = Callable[[str, TerminationReason], Awaitable[bool]]

COUNTED = (InstanceState.provisioning, InstanceState.booting, InstanceState.ready)


class AutoscaleActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        start_instance: StartInstance,
        drain_instance: DrainInstance,
        providers: Mapping[str, Compute],
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.start_instance = start_instance
        self.drain_instance = drain_instance
        self.providers = providers  # by kind: those with finitely many machines say how many

    # ------------------------------------------------------------ assess

    @activity.defn
    async def assess(self, inp: AssessInput) -> ScalingPlan:
        decision_id = uuid.UUID(inp.decision_id)
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(inp.deployment_id))
            if deployment is None or not deployment.autoscaling_enabled:
                return ScalingPlan(
                    enabled=False, delta=0, reason="autoscaling off", state=inp.state
                )
            stored = await session.get(ScalingDecision, decision_id)
            if stored is not None:  # this round was decided before a crash: the same answer
                return _plan_of(stored)
            rows = (
                await session.exec(
                    select(Instance, InstanceType.gpu_count)
                    .join(InstanceType, col(InstanceType.id) == Instance.instance_type_id)
                    .where(
                        Instance.deployment_id == deployment.id,
                        col(Instance.state).in_(COUNTED),
                    )
                )
            ).all()
        try:
            config = AutoscalingConfig.model_validate(deployment.autoscaling)
        except ValidationError as exc:
            fields = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            record = ScalingDecision(
                id=decision_id,
                deployment_id=deployment.id,
                at=datetime.fromtimestamp(inp.now, UTC),
                delta=0,
                action=ScalingAction.invalid_config,
                reason=f"the autoscaling policy is invalid, nothing is done: {fields}",
                instances=len(rows),
                state=dataclasses.asdict(inp.state),
            )
            return await self._store(deployment, record, inp.state)

        window = await self._gateway_window(inp.deployment_id, inp.now, config.window_s)
        instances = await self._instances(rows, inp.now, config.window_s)
        signals = Signals(
            instances=tuple(instances),
            queue_wait_avg_s=window.queue_wait_avg_s,
            active_requests=window.active_requests,
            queued_requests=window.queued_requests,
            arrival_rate_rps=window.arrival_rate_rps,
            completion_rate_rps=window.completion_rate_rps,
            prompt_tokens_rps=window.prompt_tokens_rps,
            output_tokens_rps=window.output_tokens_rps,
            ttft_p95_s=window.ttft_p95_s,
        )
        decision, state = evaluate(
            config, deployment.min_instances, deployment.max_instances, signals, inp.state, inp.now
        )
        available = await self._available_now(deployment) if decision.delta > 0 else None
        decision = within_capacity(decision, available)
        action = (
            ScalingAction.scale_up
            if decision.delta > 0
            else ScalingAction.scale_down
            if decision.drain
            else ScalingAction.none
        )
        record = ScalingDecision(
            id=decision_id,
            deployment_id=deployment.id,
            at=datetime.fromtimestamp(inp.now, UTC),
            delta=decision.delta if decision.delta > 0 else -len(decision.drain),
            action=action,
            reason=decision.reason,
            instances=len(instances),
            inputs={**_inputs(window, instances), "machines_available": available},
            state=dataclasses.asdict(state),
            drain=list(decision.drain),
        )
        return await self._store(deployment, record, state)

    async def _available_now(self, deployment: Deployment) -> int | None:
        """Free machines for one more instance, for providers with finitely many (registered
        hosts, tunnelled machines: connected, inside their owner's slots and quotas); None for
        the clouds."""
        async with self.sessionmaker() as session:
            found = (
                await session.exec(
                    select(Provider.kind, InstanceType.name)
                    .join(InstanceType, col(InstanceType.provider_id) == Provider.id)
                    .where(col(InstanceType.id) == deployment.instance_type_id)
                )
            ).first()
        adapter = self.providers.get(found[0]) if found is not None else None
        if not isinstance(adapter, CapacityMixin) or found is None:
            return None
        return await adapter.available_now(found[1], deployment.project_id)

    async def _store(
        self, deployment: Deployment, record: ScalingDecision, state: PolicyState
    ) -> ScalingPlan:
        async with self.sessionmaker() as session:
            session.add(record)
            await session.commit()
            await session.refresh(record)
        await self._event(deployment, record)
        return _plan_of(record, state)

    async def _gateway_window(
        self, deployment_id: str, now: float, window_s: float
    ) -> GatewayWindow:
        """The gateways' figures over the last window: now against the reading one window ago."""
        raw = await self.redis.hgetall(gateway_load_key(deployment_id))
        reports = {str(r): GatewayLoad.model_validate_json(v) for r, v in raw.items()}
        current = live_reports(reports, now)
        key = gateway_samples_key(deployment_id)
        before = await self._baselines(key, now, window_s, set(current))
        sample = json.dumps({"at": now, "loads": {r: v.model_dump() for r, v in current.items()}})
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {sample: now})
        pipe.zremrangebyscore(key, "-inf", now - 2 * window_s - 60)  # one window back is enough
        pipe.expire(key, int(2 * window_s + 600))
        await pipe.execute()
        return gateway_window(current, before)

    async def _baselines(
        self, key: str, now: float, window_s: float, replicas: set[str]
    ) -> dict[str, GatewayLoad]:
        """Each replica's reading from one window ago; for a replica that reading lacks (it
        began publishing within the window: early on, or a new replica), its oldest reading
        since. Chosen per replica: a sample taken before a replica's first report must not
        deny it a baseline for a whole window."""
        found: dict[str, GatewayLoad] = {}

        def take(raw: object) -> None:
            loads = json.loads(str(raw))["loads"]
            for replica in replicas - found.keys():
                if replica in loads:
                    found[replica] = GatewayLoad.model_validate(loads[replica])

        older = await self.redis.zrevrangebyscore(key, now - window_s, "-inf", start=0, num=1)
        if older:
            take(older[0])
        if replicas - found.keys():
            for raw in await self.redis.zrangebyscore(key, f"({now - window_s}", now):
                take(raw)
                if not replicas - found.keys():
                    break
        return found

    async def _instances(self, rows: Any, now: float, window_s: float) -> list[InstanceLoad]:
        """Each instance's running requests (its last heartbeat) and GPU utilisation (the
        heartbeats' mean over the window; the simulator reports its modelled busy share)."""
        ids = [str(instance.id) for instance, _ in rows]
        loads = await self.redis.hmget(INSTANCE_LOAD, ids) if ids else []
        since = datetime.fromtimestamp(now - window_s, UTC)
        async with self.sessionmaker() as session:
            utilization = dict(
                (
                    await session.exec(
                        select(InstanceMetric.instance_id, func.avg(InstanceMetric.gpu_utilization))
                        .where(
                            col(InstanceMetric.instance_id).in_([i.id for i, _ in rows]),
                            col(InstanceMetric.at) >= since,
                        )
                        .group_by(col(InstanceMetric.instance_id))
                    )
                ).all()
            )
        result = []
        for (instance, gpu_count), raw in zip(rows, loads, strict=True):
            heartbeat = HeartbeatLoad.model_validate_json(raw) if raw else None
            busy = utilization.get(instance.id)
            result.append(
                InstanceLoad(
                    id=str(instance.id),
                    ready=instance.state == InstanceState.ready,
                    created_at=instance.created_at.timestamp(),
                    gpu_count=max(1, gpu_count or 0),
                    active_requests=(heartbeat.requests_running or 0.0) if heartbeat else 0.0,
                    gpu_utilization=None if busy is None else float(busy) / 100,
                )
            )
        return result

    # ------------------------------------------------------------ act

    @activity.defn
    async def scale_up(self, inp: ScaleUpInput) -> None:
        """Create the instances (ids chosen by the workflow: a retry creates nothing twice)."""
        created: list[uuid.UUID] = []
        held_back = None
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(inp.deployment_id))
            if deployment is None:
                return
            for new_id in map(uuid.UUID, inp.new_instance_ids):
                if await session.get(Instance, new_id) is None:
                    try:  # the project's quota, checked with its row locked
                        await check_and_reserve(session, deployment)
                    except QuotaExceeded as exc:
                        held_back = exc.reason
                        break
                    session.add(new_instance(deployment, new_id))
                created.append(new_id)
            await session.commit()
        for new_id in created:
            await self.start_instance(new_id)
        result: dict[str, Any] = {"started": [str(i) for i in created]}
        if held_back is not None:
            result["held_back_by_quota"] = held_back
        await self._result(deployment, inp.decision_id, result)

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
        drained, refused = [], []
        for instance in rows:
            # The workflow decides: one that stopped being ready meanwhile refuses the drain.
            if await self.drain_instance(instance.workflow_id, TerminationReason.scale_down):
                drained.append(str(instance.id))
            else:
                refused.append(str(instance.id))
        if deployment is not None:
            await self._result(
                deployment, inp.decision_id, {"drained": drained, "refused": refused}
            )

    async def _result(
        self, deployment: Deployment, decision_id: str, result: dict[str, Any]
    ) -> None:
        async with self.sessionmaker() as session:
            record = await session.get(ScalingDecision, uuid.UUID(decision_id))
            if record is None:
                return
            record.result = result
            session.add(record)
            await session.commit()
            await session.refresh(record)
        await self._event(deployment, record)

    async def _event(self, deployment: Deployment, record: ScalingDecision) -> None:
        await publish_event(
            self.redis,
            EventKind.scaling,
            str(deployment.project_id),
            {"deployment_id": str(deployment.id), **record.public()},
        )


def _plan_of(record: ScalingDecision, state: PolicyState | None = None) -> ScalingPlan:
    return ScalingPlan(
        enabled=True,
        delta=record.delta,
        reason=record.reason,
        drain_instance_ids=list(record.drain),
        state=state if state is not None else PolicyState(**record.state),
    )


def _inputs(window: GatewayWindow, instances: list[InstanceLoad]) -> dict[str, Any]:
    ready = [i for i in instances if i.ready]
    utilizations = [i.gpu_utilization for i in ready if i.gpu_utilization is not None]
    return {
        **window.as_inputs(),
        "ready": len(ready),
        "booting": len(instances) - len(ready),
        "gpus": sum(i.gpu_count for i in instances),
        "running": sum(i.active_requests for i in instances),
        "gpu_utilization": (
            round(sum(utilizations) / len(utilizations), 3) if utilizations else None
        ),
    }
