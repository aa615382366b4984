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
        """Wait until the agent reports no request in flight, or the drain deadline.

        A load the agent cannot tell (no answer, or an engine whose /metrics lacks the request
        gauges: `in_flight` null) is unknown, not idle: the drain waits for its deadline then."""
        instance = await self.ctx.instance(inp.instance_id)
        async with self.ctx.action(inp.instance_id, Step.drain) as action:
            unknown = False

            async def idle() -> int | None:
                nonlocal unknown
                r = await self.ctx.http.get(
                    f"{instance.agent_url}/load", headers=self.ctx.agent_headers(inp.instance_id)
                )
                in_flight = r.json().get("in_flight") if r.status_code == 200 else None
                unknown = not isinstance(in_flight, int | float)
                return 0 if not unknown and in_flight == 0 else None

            try:
                await self.ctx.poll(idle, inp.timeout_s, inp.poll_interval_s, "requests to finish")
                action.detail = "no request in flight"
            except ApplicationError:
                why = "the load unknown" if unknown else "requests in flight"
                action.detail = f"drain deadline ({inp.timeout_s:.0f}s) passed with {why}"
            return StepResult(ok=True, detail=action.detail)
