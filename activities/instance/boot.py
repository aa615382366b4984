"""Booting: each boot step waits for one sign of life (docs/architecture.md, "Progress steps"),
recorded as an action; the last one checks the agent is the one we ship."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import update
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import BootStepInput, InstanceRef, StepResult
from activities.instance.context import AtProvider, InstanceContext
from activities.providers.base import AGENT_PORT, ENGINE_PORT
from agent.identity import expected_agent, integrity_ok
from core import states
from core.events import EventKind
from core.models import ActionStatus, InstanceAction, utcnow
from core.progress import Step

BootStep = Callable[[BootStepInput, AtProvider], Awaitable[str]]


class BootActivities:
    def __init__(self, ctx: InstanceContext) -> None:
        self.ctx = ctx
        self.steps: dict[Step, BootStep] = {
            Step.provider_start: self._start,
            Step.ip_assigned: self._wait_ip,
            Step.agent_installed: self._wait_agent,
            Step.engine_http_up: self._wait_engine,
            Step.model_loaded: self._wait_model,
            Step.warmup: self._warmup,
            Step.health_check: self._integrity_check,
        }

    @activity.defn
    async def boot_step(self, inp: BootStepInput) -> StepResult:
        """One boot step, recorded as an action; its detail says what was seen."""
        run = self.steps.get(inp.step)
        if run is None:
            raise ApplicationError(f"unknown boot step {inp.step!r}", non_retryable=True)
        async with (
            self.ctx.at_provider(inp.instance_id) as at,
            self.ctx.action(inp.instance_id, inp.step) as action,
        ):
            action.detail = await run(inp, at)
        return StepResult(ok=True, detail=action.detail)

    @activity.defn
    async def mark_ready(self, ref: InstanceRef) -> None:
        async with self.ctx.action(ref.instance_id, Step.ready) as action:
            async with self.ctx.sessionmaker() as session:
                # The step's success and the state in one commit: no reader sees an instance
                # "ready" at 95 % (the action would otherwise finish just after the state).
                await session.execute(
                    update(InstanceAction)
                    .where(col(InstanceAction.id) == action.id)
                    .values(status=ActionStatus.succeeded, finished_at=utcnow())
                )
                await states.booting_to_ready(session, uuid.UUID(ref.instance_id))
            await self.ctx.set_routable(ref.instance_id, True)
        await self.ctx.event(EventKind.instance, ref.instance_id, {})

    # ------------------------------------------------------------ the steps

    async def _start(self, inp: BootStepInput, at: AtProvider) -> str:
        await at.adapter.start(inp.resource_id)
        return "started"

    async def _wait_ip(self, inp: BootStepInput, at: AtProvider) -> str:
        async def has_ip() -> tuple[str, str | None, str | None] | None:
            machine = await at.adapter.get(inp.resource_id)
            if machine is None:
                raise ApplicationError(
                    "machine disappeared at the provider while booting",
                    type="MachineGone",
                    non_retryable=True,
                )
            if not machine.ip_address:
                return None
            return machine.ip_address, machine.agent_url, machine.engine_url

        ip, agent_url, engine_url = await self.ctx.poll(
            has_ip, inp.timeout_s, inp.poll_interval_s, "an IP address"
        )
        await self.ctx.update_instance(
            inp.instance_id,
            ip_address=ip,
            agent_url=agent_url or f"http://{ip}:{AGENT_PORT}",
            engine_url=engine_url or f"http://{ip}:{ENGINE_PORT}",
        )
        return ip

    @staticmethod
    def _urls(at: AtProvider) -> tuple[str, str]:
        """The agent's and the engine's URLs, recorded by the ip_assigned step."""
        agent_url, engine_url = at.instance.agent_url, at.instance.engine_url
        if agent_url is None or engine_url is None:
            raise ApplicationError(
                f"instance {at.instance.id} has no addresses: ip_assigned did not run",
                non_retryable=True,
            )
        return agent_url, engine_url

    async def _wait_agent(self, inp: BootStepInput, at: AtProvider) -> str:
        agent_url, _ = self._urls(at)

        async def agent_up() -> str | None:
            r = await self.ctx.http.get(f"{agent_url}/healthz")
            return "agent answers /healthz" if r.status_code == 200 else None

        return await self.ctx.poll(
            agent_up, inp.timeout_s, inp.poll_interval_s, "the agent's /healthz"
        )

    async def _wait_engine(self, inp: BootStepInput, at: AtProvider) -> str:
        _, engine_url = self._urls(at)

        async def engine_up() -> str | None:
            r = await self.ctx.http.get(f"{engine_url}/health")
            return f"engine answers /health ({r.status_code})"

        return await self.ctx.poll(
            engine_up, inp.timeout_s, inp.poll_interval_s, "the engine's HTTP port"
        )

    async def _wait_model(self, inp: BootStepInput, at: AtProvider) -> str:
        agent_url, _ = self._urls(at)

        async def model_loaded() -> str | None:
            r = await self.ctx.http.get(f"{agent_url}/readyz")
            return "model loaded" if r.status_code == 200 else None

        return await self.ctx.poll(
            model_loaded, inp.timeout_s, inp.poll_interval_s, "the model to load"
        )

    async def _warmup(self, inp: BootStepInput, at: AtProvider) -> str:
        _, engine_url = self._urls(at)
        deployment = await self.ctx.deployment_of(at.instance)
        body = {"model": deployment.served_name, "prompt": "warmup", "max_tokens": 1}

        async def warm() -> str | None:
            r = await self.ctx.http.post(
                f"{engine_url}/v1/completions",
                json=body,
                headers=self.ctx.engine_headers(inp.instance_id),
                timeout=30,
            )
            if r.status_code != 200:
                return None
            return f"warmup answered in {r.elapsed.total_seconds() * 1000:.0f} ms"

        return await self.ctx.poll(warm, inp.timeout_s, inp.poll_interval_s, "a warmup completion")

    async def _integrity_check(self, inp: BootStepInput, at: AtProvider) -> str:
        """Readiness plus /info: the agent's version and checksum must be the ones we ship."""
        agent_url, _ = self._urls(at)

        async def info() -> dict[str, Any] | None:
            ready = await self.ctx.http.get(f"{agent_url}/readyz")
            if ready.status_code != 200:
                return None
            r = await self.ctx.http.get(
                f"{agent_url}/info", headers=self.ctx.agent_headers(inp.instance_id)
            )
            return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]

        data = await self.ctx.poll(info, inp.timeout_s, inp.poll_interval_s, "the agent's /info")
        settings = self.ctx.settings
        wanted_version, checksum = expected_agent(settings.expected_agent_version)
        got_version, got_checksum = str(data.get("version")), str(data.get("checksum"))
        ok = integrity_ok(got_version, got_checksum, settings.expected_agent_version)
        await self.ctx.update_instance(
            inp.instance_id,
            agent_version=got_version[:32],
            agent_checksum=got_checksum[:64],
            agent_integrity_ok=ok,
        )
        if ok:
            return f"agent {got_version} checksum verified"
        message = (
            f"agent mismatch: version {got_version} (expected {wanted_version}), "
            f"checksum {got_checksum[:12]}… (expected {checksum[:12]}…)"
        )
        if settings.block_on_agent_mismatch:
            raise ApplicationError(message, type="AgentMismatch", non_retryable=True)
        return message + " — flagged, not blocking"
