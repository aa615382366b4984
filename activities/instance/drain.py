"""Draining: out of routing at once, then wait for the requests in flight (up to a deadline)."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import DrainInput, StepResult
from activities.instance.context import InstanceContext
from core import states
from core.events import EventKind
from core.progress import Step


class DrainActivities:
    def __init__(self, ctx: InstanceContext) -> None:
        self.ctx = ctx

    @activity.defn
    async def begin_drain(self, inp: DrainInput) -> bool:
        """ready -> draining and out of routing at once. False when the state forbids draining."""
        await self.ctx.set_routable(inp.instance_id, False)
        async with self.ctx.sessionmaker() as session:
            try:
                await states.ready_to_draining(
                    session, uuid.UUID(inp.instance_id), reason=inp.reason
                )
            except states.IllegalTransitionError:
                return False
        await self.ctx.event(EventKind.instance, inp.instance_id, {})
        return True

    @activity.defn
    async def wait_drained(self, inp: DrainInput) -> StepResult:
        """Wait until the agent reports no request in flight, or the drain deadline."""
        instance = await self.ctx.instance(inp.instance_id)
        async with self.ctx.action(inp.instance_id, Step.drain) as action:

            async def idle() -> int | None:
                r = await self.ctx.http.get(f"{instance.agent_url}/load")
                in_flight = int(r.json().get("in_flight", 0)) if r.status_code == 200 else 1
                return 0 if in_flight == 0 else None

            try:
                await self.ctx.poll(idle, inp.timeout_s, inp.poll_interval_s, "requests to finish")
                action.detail = "no request in flight"
            except ApplicationError:
                action.detail = (
                    f"drain deadline ({inp.timeout_s:.0f}s) passed with requests in flight"
                )
            return StepResult(ok=True, detail=action.detail)
