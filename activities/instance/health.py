"""Serving: routing on and off, health checks, and the replacement of an unhealthy instance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from temporalio import activity

from activities.contracts import (
    FailInput,
    HealthInput,
    HealthResult,
    ReplacementInput,
    RoutingInput,
)
from activities.instance.context import InstanceContext
from core.instances import new_instance
from core.models import ActionStatus, Instance, InstanceAction, InstanceState, utcnow
from core.progress import Step
from core.quotas import QuotaExceeded, check_and_reserve
from core.redis_keys import INSTANCE_LOAD
from core.wire import InstanceLoad

# Starts the workflow of a new instance; the worker passes one from workflows/client.py.
StartInstance = Callable[[uuid.UUID], Awaitable[None]]


class HealthActivities:
    def __init__(self, ctx: InstanceContext, start_instance: StartInstance) -> None:
        self.ctx = ctx
        self.start_instance = start_instance

    @activity.defn
    async def set_routable(self, inp: RoutingInput) -> None:
        await self.ctx.set_routable(inp.instance_id, inp.routable)

    @activity.defn
    async def check_health(self, inp: HealthInput) -> HealthResult:
        """A fresh heartbeat counts as healthy; otherwise ask the agent's /readyz and /info."""
        instance = await self.ctx.instance(inp.instance_id)
        if instance.state == InstanceState.provider_deleted:
            return HealthResult(healthy=False, detail="machine gone at provider", gone=True)
        fresh_s = self.ctx.settings.heartbeat_fresh_s
        raw = await self.ctx.redis.hget(INSTANCE_LOAD, inp.instance_id)
        if raw:
            load = InstanceLoad.model_validate_json(raw)
            age = time.time() - load.ts
            # A fresh heartbeat spares the active check only when it says the engine serves.
            if age < fresh_s and load.engine_ready:
                return HealthResult(healthy=True, detail=f"heartbeat {age:.0f}s old")
            # One that says it does not counts against the instance only if it came after the
            # instance was found ready: the last heartbeat of the boot (the engine "starting")
            # stays fresh for a while after the readiness check, and the agent sends the next
            # only a heartbeat period later; until then the active check decides.
            ready_at = instance.ready_at.timestamp() if instance.ready_at else None
            if age < fresh_s and (ready_at is None or load.ts > ready_at):
                return HealthResult(
                    healthy=False, detail=f"agent reports the engine {load.engine_state}"
                )
        try:
            ready = await self.ctx.http.get(f"{instance.agent_url}/readyz")
            info = await self.ctx.http.get(
                f"{instance.agent_url}/info", headers=self.ctx.agent_headers(str(instance.id))
            )
        except httpx.HTTPError as exc:
            return HealthResult(healthy=False, detail=f"agent unreachable: {type(exc).__name__}")
        if ready.status_code != 200 or info.status_code != 200:
            return HealthResult(
                healthy=False, detail=f"/readyz {ready.status_code}, /info {info.status_code}"
            )
        return HealthResult(healthy=True, detail="agent ready")

    @activity.defn
    async def record_unhealthy(self, inp: FailInput) -> None:
        """Out of routing at once, with the reason in the action log."""
        await self.ctx.set_routable(inp.instance_id, False)
        async with self.ctx.action(inp.instance_id, Step.unhealthy, detail=inp.error):
            pass

    @activity.defn
    async def start_replacement(self, inp: ReplacementInput) -> None:
        """A new instance for the same deployment (idempotent: its id comes from the workflow)."""
        new_id = uuid.UUID(inp.new_instance_id)
        old = await self.ctx.instance(inp.replaced_instance_id)
        deployment = await self.ctx.deployment_of(old)
        async with self.ctx.sessionmaker() as session:
            if await session.get(Instance, new_id) is None:
                try:  # the project's quota, the instance being replaced not counted
                    await check_and_reserve(session, deployment, replacing=old.id)
                except QuotaExceeded as exc:
                    session.add(
                        InstanceAction(
                            instance_id=old.id,
                            step=Step.replacement,
                            status=ActionStatus.failed,
                            error=f"not replaced: {exc.reason}",
                            finished_at=utcnow(),
                        )
                    )
                    await session.commit()
                    return
                # One transaction: a retry finds both rows or neither.
                session.add(new_instance(deployment, new_id))
                session.add(
                    InstanceAction(
                        instance_id=old.id,
                        step=Step.replacement,
                        status=ActionStatus.succeeded,
                        detail=f"replaced by {new_id}",
                        finished_at=utcnow(),
                    )
                )
                await session.commit()
        await self.start_instance(new_id)
