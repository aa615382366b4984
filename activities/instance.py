"""Activities of the instance lifecycle: database transitions, provider calls, agent checks,
volume discovery and deletion, routing registry updates.

Every activity is idempotent: transitions are conditional (a repeat is a no-op), provider resources
are found by their instance tag, deletes treat "missing" as success. Long waits heartbeat, so a
dead worker is noticed and a cancelled workflow stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.integrity import agent_integrity_ok, expected_agent
from activities.providers.base import (
    AGENT_PORT,
    ENGINE_PORT,
    Compute,
    CreateRequest,
    ProviderError,
    PublicIPMixin,
    VolumeSpec,
)
from core import states
from core.events import publish_event
from core.instances import new_instance
from core.models import (
    ActionStatus,
    Deployment,
    Instance,
    InstanceAction,
    InstanceState,
    InstanceType,
    InstanceVolume,
    Provider,
    TerminationReason,
    utcnow,
)
from core.progress import Step
from core.redis_keys import INSTANCE_LOAD, ROUTING_CHANNEL, ROUTING_REGISTRY
from core.settings import Settings
from core.tokens import agent_token, token_hash
from core.wire import InstanceLoad, RegistryChange, RoutableInstance
from workflows.types import (
    CreateResult,
    DrainInput,
    FailInput,
    HealthResult,
    InstanceRef,
    LifecycleSpec,
    ReplacementInput,
    RoutingInput,
    StepInput,
    StepResult,
    TerminateInput,
    VolumePlan,
    VolumeRef,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def provider_failure(exc: ProviderError) -> ApplicationError:
    """A typed provider error as a Temporal failure; non-retryable ones stop retries at once."""
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=not exc.retryable)


async def _heartbeat_forever(detail: str, interval_s: float = 2.0) -> None:
    while True:
        activity.heartbeat(detail)
        await asyncio.sleep(interval_s)


class InstanceActivities:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        providers: dict[str, Compute],
        start_instance: Callable[[uuid.UUID], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.providers = providers
        self._start_instance = start_instance
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))

    # ------------------------------------------------------------ helpers

    async def _instance(self, session: AsyncSession, instance_id: str) -> Instance:
        instance = await session.get(Instance, uuid.UUID(instance_id))
        if instance is None:
            raise ApplicationError(f"instance {instance_id} does not exist", non_retryable=True)
        return instance

    async def _provider_of(self, session: AsyncSession, instance: Instance) -> Compute:
        provider = await session.get(Provider, instance.provider_id)
        assert provider is not None
        adapter = self.providers.get(provider.kind)
        if adapter is None:
            raise ApplicationError(
                f"provider {provider.name!r} ({provider.kind}) is not enabled on this worker",
                type="ProviderNotEnabled",
            )
        return adapter

    @contextlib.asynccontextmanager
    async def _action(
        self, instance_id: str, step: str, detail: str | None = None
    ) -> AsyncIterator[InstanceAction]:
        """Record one action: running now, then succeeded or failed with the error text.

        While it runs the activity heartbeats, so a worker that dies mid-step is noticed within
        the heartbeat timeout and the step is retried elsewhere.
        """
        async with self.sessionmaker() as session:
            # Only one attempt of a step runs at a time: a "running" row left by an attempt whose
            # worker died is closed here, so the timeline never shows a step running forever.
            await session.execute(
                update(InstanceAction)
                .where(
                    InstanceAction.instance_id == uuid.UUID(instance_id),  # type: ignore[arg-type]
                    InstanceAction.step == step,  # type: ignore[arg-type]
                    InstanceAction.status == ActionStatus.running,  # type: ignore[arg-type]
                )
                .values(
                    status=ActionStatus.failed,
                    error="attempt lost (worker stopped); retried",
                    finished_at=utcnow(),
                )
            )
            action = InstanceAction(instance_id=uuid.UUID(instance_id), step=step, detail=detail)
            session.add(action)
            await session.commit()
            await session.refresh(action)
        await self._event("action", instance_id, {"step": step, "status": "running"})
        beat = asyncio.create_task(_heartbeat_forever(step)) if activity.in_activity() else None
        try:
            yield action
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                error = "cancelled"
            await self._finish_action(action, ActionStatus.failed, error=error)
            raise
        else:
            await self._finish_action(action, ActionStatus.succeeded)
        finally:
            if beat is not None:
                beat.cancel()

    async def _finish_action(
        self, action: InstanceAction, status: ActionStatus, error: str | None = None
    ) -> None:
        async with self.sessionmaker() as session:
            await session.execute(
                update(InstanceAction)
                .where(InstanceAction.id == action.id)  # type: ignore[arg-type]
                .values(status=status, error=error, finished_at=utcnow(), detail=action.detail)
            )
            await session.commit()
        await self._event(
            "action",
            str(action.instance_id),
            {"step": action.step, "status": status.value, "error": error},
        )

    async def _event(self, kind: str, instance_id: str, data: dict[str, Any]) -> None:
        try:
            async with self.sessionmaker() as session:
                instance = await session.get(Instance, uuid.UUID(instance_id))
            project = str(instance.project_id) if instance else None
            state = instance.state.value if instance else None
            await publish_event(
                self.redis, kind, project, {"instance_id": instance_id, "state": state, **data}
            )
        except Exception:  # events are best effort: never fail a lifecycle step for them
            log.exception("could not publish %s event for %s", kind, instance_id)

    async def _poll(
        self,
        check: Callable[[], Awaitable[T | None]],
        timeout_s: float,
        interval_s: float,
        what: str,
    ) -> T:
        """Call `check` until it returns a value, heartbeating; ApplicationError at the deadline."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            try:
                result = await check()
                if result is not None:
                    return result
            except (httpx.HTTPError, OSError) as exc:
                last_error = f": {type(exc).__name__} {exc}".rstrip()
            activity.heartbeat(what)
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"timed out after {timeout_s:.0f}s waiting for {what}{last_error}",
                    type="StepTimeout",
                    non_retryable=True,
                )
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------ provisioning

    @activity.defn
    async def load_spec(self, ref: InstanceRef) -> LifecycleSpec:
        s = self.settings
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            deployment = await session.get(Deployment, instance.deployment_id)
            provider = await session.get(Provider, instance.provider_id)
            assert deployment is not None and provider is not None
        return LifecycleSpec(
            instance_id=ref.instance_id,
            deployment_id=str(instance.deployment_id),
            provider=provider.kind,
            state=instance.state.value,
            resource_id=instance.provider_resource_id,
            boot_timeout_s=deployment.boot_timeout_s or s.boot_timeout_s,
            health_interval_s=s.health_interval_s,
            heartbeat_fresh_s=s.heartbeat_fresh_s,
            unhealthy_threshold=s.unhealthy_threshold,
            drain_timeout_s=s.drain_timeout_s,
            archive_after_s=s.archive_after_s,
            poll_interval_s=s.boot_poll_interval_s,
            block_on_agent_mismatch=s.block_on_agent_mismatch,
            health_rounds_per_run=s.health_rounds_per_run,
        )

    @activity.defn
    async def record_request(self, ref: InstanceRef) -> None:
        async with self.sessionmaker() as session:
            done = (
                await session.execute(
                    select(col(InstanceAction.id)).where(
                        InstanceAction.instance_id == uuid.UUID(ref.instance_id),  # type: ignore[arg-type]
                        InstanceAction.step == Step.request_created,  # type: ignore[arg-type]
                        InstanceAction.status == ActionStatus.succeeded,  # type: ignore[arg-type]
                    )
                )
            ).first()
        if done is None:
            async with self._action(ref.instance_id, Step.request_created):
                pass

    @activity.defn
    async def provider_create(self, ref: InstanceRef) -> CreateResult:
        """Create the machine (or find the one a previous attempt made), record its volumes."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            deployment = await session.get(Deployment, instance.deployment_id)
            itype = await session.get(InstanceType, instance.instance_type_id)
            adapter = await self._provider_of(session, instance)
        assert deployment is not None and itype is not None
        token = agent_token(self.settings.secret_key or "", ref.instance_id)
        version, checksum = expected_agent(self.settings)
        volumes = [
            VolumeSpec(
                size_gb=float(v.get("size_gb", 10)),
                volume_type=str(v.get("volume_type", "data")),
                delete_on_terminate=bool(v.get("delete_on_terminate", True)),
            )
            for v in deployment.engine_args.get("volumes", [])
        ]
        engine_args = {k: v for k, v in deployment.engine_args.items() if k != "volumes"}
        request = CreateRequest(
            instance_id=ref.instance_id,
            instance_type=itype.name,
            model=deployment.model,
            served_name=deployment.served_name,
            flavor=deployment.flavor,
            zone=itype.zones[0] if itype.zones else None,
            engine_args=engine_args,
            agent_env={
                "INVENTIV_AGENT_CONTROL_PLANE_URL": self.settings.api_url,
                "INVENTIV_AGENT_TOKEN": token,
                "WORKER_AGENT_URL": f"{self.settings.api_url}/api/v1/agents/bundle",
                "WORKER_AGENT_SHA256": checksum,
            },
            volumes=volumes,
            gpu_count=max(itype.gpu_count, 1),
        )
        async with self._action(ref.instance_id, Step.provider_create) as action:
            try:
                machine = await adapter.create(request)
            except ProviderError as exc:
                raise provider_failure(exc) from exc
            action.detail = f"{machine.resource_id} (agent {version})"
            async with self.sessionmaker() as session:
                await session.execute(
                    update(Instance)
                    .where(Instance.id == uuid.UUID(ref.instance_id))  # type: ignore[arg-type]
                    .values(
                        provider_resource_id=machine.resource_id,
                        zone=machine.zone,
                        agent_token_hash=token_hash(token),
                        updated_at=utcnow(),
                    )
                )
                await session.commit()
            await self._record_volumes(ref.instance_id, machine.volumes)
        async with self.sessionmaker() as session:
            await states.provisioning_to_booting(session, uuid.UUID(ref.instance_id))
        await self._event("instance", ref.instance_id, {})
        return CreateResult(resource_id=machine.resource_id)

    async def _record_volumes(self, instance_id: str, volumes: list[Any]) -> None:
        if not volumes:
            return
        async with self.sessionmaker() as session:
            for v in volumes:
                await session.execute(
                    insert(InstanceVolume)
                    .values(
                        id=uuid.uuid4(),
                        instance_id=uuid.UUID(instance_id),
                        provider_volume_id=v.volume_id,
                        volume_type=v.volume_type,
                        size_gb=v.size_gb,
                        is_boot=v.is_boot,
                        delete_on_terminate=v.delete_on_terminate,
                        state="attached",
                        created_at=utcnow(),
                    )
                    .on_conflict_do_nothing(index_elements=["instance_id", "provider_volume_id"])
                )
            await session.commit()

    # ------------------------------------------------------------ booting

    @activity.defn
    async def boot_step(self, inp: StepInput) -> StepResult:
        """One boot step (DESIGN.md section 4), recorded as an action."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
            adapter = await self._provider_of(session, instance)
        async with self._action(inp.instance_id, inp.step) as action:
            detail = await self._run_boot_step(inp, instance, adapter)
            action.detail = detail
        return StepResult(ok=True, detail=detail)

    async def _run_boot_step(self, inp: StepInput, instance: Instance, adapter: Compute) -> str:
        step, timeout, interval = inp.step, inp.timeout_s, inp.poll_interval_s
        if step == Step.provider_start:
            try:
                await adapter.start(inp.resource_id)
            except ProviderError as exc:
                raise provider_failure(exc) from exc
            return "started"
        if step == Step.ip_assigned:
            return await self._wait_ip(inp, adapter)
        agent_url, engine_url = instance.agent_url or "", instance.engine_url or ""
        if step == Step.agent_installed:

            async def agent_up() -> str | None:
                r = await self.http.get(f"{agent_url}/healthz")
                return "agent answers /healthz" if r.status_code == 200 else None

            return await self._poll(agent_up, timeout, interval, "the agent's /healthz")
        if step == Step.engine_http_up:

            async def engine_up() -> str | None:
                r = await self.http.get(f"{engine_url}/health")
                return f"engine answers /health ({r.status_code})"

            return await self._poll(engine_up, timeout, interval, "the engine's HTTP port")
        if step == Step.model_loaded:

            async def model_loaded() -> str | None:
                r = await self.http.get(f"{agent_url}/readyz")
                return "model loaded" if r.status_code == 200 else None

            return await self._poll(model_loaded, timeout, interval, "the model to load")
        if step == Step.warmup:
            return await self._warmup(inp, instance)
        if step == Step.health_check:
            return await self._integrity_check(inp, instance)
        raise ApplicationError(f"unknown boot step {step!r}", non_retryable=True)

    async def _wait_ip(self, inp: StepInput, adapter: Compute) -> str:
        async def has_ip() -> tuple[str, str | None, str | None] | None:
            machine = await adapter.get(inp.resource_id)
            if machine is None:
                raise ApplicationError(
                    "machine disappeared at the provider while booting",
                    type="MachineGone",
                    non_retryable=True,
                )
            if not machine.ip_address:
                return None
            return machine.ip_address, machine.agent_url, machine.engine_url

        ip, agent_url, engine_url = await self._poll(
            has_ip, inp.timeout_s, inp.poll_interval_s, "an IP address"
        )
        async with self.sessionmaker() as session:
            await session.execute(
                update(Instance)
                .where(Instance.id == uuid.UUID(inp.instance_id))  # type: ignore[arg-type]
                .values(
                    ip_address=ip,
                    agent_url=agent_url or f"http://{ip}:{AGENT_PORT}",
                    engine_url=engine_url or f"http://{ip}:{ENGINE_PORT}",
                    updated_at=utcnow(),
                )
            )
            await session.commit()
        return ip

    async def _warmup(self, inp: StepInput, instance: Instance) -> str:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, instance.deployment_id)
        assert deployment is not None
        body = {"model": deployment.served_name, "prompt": "warmup", "max_tokens": 1}

        async def warm() -> str | None:
            r = await self.http.post(f"{instance.engine_url}/v1/completions", json=body, timeout=30)
            if r.status_code != 200:
                return None
            return f"warmup answered in {r.elapsed.total_seconds() * 1000:.0f} ms"

        return await self._poll(warm, inp.timeout_s, inp.poll_interval_s, "a warmup completion")

    async def _integrity_check(self, inp: StepInput, instance: Instance) -> str:
        """Readiness plus /info: the agent's version and checksum must be the ones we ship."""

        async def info() -> dict[str, Any] | None:
            ready = await self.http.get(f"{instance.agent_url}/readyz")
            if ready.status_code != 200:
                return None
            r = await self.http.get(f"{instance.agent_url}/info")
            return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]

        data = await self._poll(info, inp.timeout_s, inp.poll_interval_s, "the agent's /info")
        wanted_version, checksum = expected_agent(self.settings)
        got_version, got_checksum = str(data.get("version")), str(data.get("checksum"))
        ok = agent_integrity_ok(got_version, got_checksum, self.settings)
        async with self.sessionmaker() as session:
            await session.execute(
                update(Instance)
                .where(Instance.id == uuid.UUID(inp.instance_id))  # type: ignore[arg-type]
                .values(
                    agent_version=got_version[:32],
                    agent_checksum=got_checksum[:64],
                    agent_integrity_ok=ok,
                    updated_at=utcnow(),
                )
            )
            await session.commit()
        if ok:
            return f"agent {got_version} checksum verified"
        message = (
            f"agent mismatch: version {got_version} (expected {wanted_version}), "
            f"checksum {got_checksum[:12]}… (expected {checksum[:12]}…)"
        )
        if self.settings.block_on_agent_mismatch:
            raise ApplicationError(message, type="AgentMismatch", non_retryable=True)
        return message + " — flagged, not blocking"

    @activity.defn
    async def mark_ready(self, ref: InstanceRef) -> None:
        async with self._action(ref.instance_id, Step.ready):
            async with self.sessionmaker() as session:
                await states.booting_to_ready(session, uuid.UUID(ref.instance_id))
            await self._set_routable(ref.instance_id, True)
        await self._event("instance", ref.instance_id, {})

    @activity.defn
    async def fail_startup(self, inp: FailInput) -> None:
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
            reason = TerminationReason(inp.reason)
            if instance.state == InstanceState.provisioning:
                await states.provisioning_to_startup_failed(
                    session, instance.id, reason=reason, error=inp.error
                )
            elif instance.state == InstanceState.booting:
                await states.booting_to_startup_failed(
                    session, instance.id, reason=reason, error=inp.error
                )
        await self._event("instance", inp.instance_id, {"error": inp.error})

    # ------------------------------------------------------------ routing and health

    async def _set_routable(self, instance_id: str, routable: bool) -> None:
        if not routable:
            await self.redis.hdel(ROUTING_REGISTRY, instance_id)
            change = RegistryChange(op="remove", instance_id=instance_id)
            await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())
            return
        async with self.sessionmaker() as session:
            instance = await self._instance(session, instance_id)
            deployment = await session.get(Deployment, instance.deployment_id)
            itype = await session.get(InstanceType, instance.instance_type_id)
        assert deployment is not None and itype is not None
        entry = RoutableInstance(
            instance_id=instance_id,
            deployment_id=str(deployment.id),
            project_id=str(deployment.project_id),
            model=deployment.served_name,
            engine_url=instance.engine_url or "",
            agent_url=instance.agent_url,
            gpu_count=max(itype.gpu_count, 1),
            session_affinity=deployment.session_affinity,
        )
        await self.redis.hset(ROUTING_REGISTRY, instance_id, entry.model_dump_json())
        change = RegistryChange(op="put", instance_id=instance_id, instance=entry)
        await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())

    @activity.defn
    async def set_routable(self, inp: RoutingInput) -> None:
        await self._set_routable(inp.instance_id, inp.routable)

    @activity.defn
    async def check_health(self, inp: StepInput) -> HealthResult:
        """A fresh heartbeat counts as healthy; otherwise ask the agent's /readyz and /info."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
        if instance.state == InstanceState.provider_deleted:
            return HealthResult(healthy=False, detail="machine gone at provider", gone=True)
        raw = await self.redis.hget(INSTANCE_LOAD, inp.instance_id)
        if raw:
            load = InstanceLoad.model_validate_json(raw)
            age = time.time() - load.ts
            # A fresh heartbeat spares the active check only when it says the engine serves.
            if age < self.settings.heartbeat_fresh_s and load.engine_ready:
                return HealthResult(healthy=True, detail=f"heartbeat {age:.0f}s old")
            if age < self.settings.heartbeat_fresh_s:
                return HealthResult(
                    healthy=False, detail=f"agent reports the engine {load.engine_state}"
                )
        try:
            ready = await self.http.get(f"{instance.agent_url}/readyz")
            info = await self.http.get(f"{instance.agent_url}/info")
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
        await self._set_routable(inp.instance_id, False)
        async with self._action(inp.instance_id, "unhealthy", detail=inp.error):
            pass

    @activity.defn
    async def start_replacement(self, inp: ReplacementInput) -> None:
        """A new instance for the same deployment (idempotent: its id comes from the workflow)."""
        new_id = uuid.UUID(inp.new_instance_id)
        async with self.sessionmaker() as session:
            old = await self._instance(session, inp.replaced_instance_id)
            deployment = await session.get(Deployment, old.deployment_id)
            assert deployment is not None
            if await session.get(Instance, new_id) is None:
                session.add(new_instance(deployment, new_id))
                session.add(
                    InstanceAction(
                        instance_id=old.id,
                        step="replacement",
                        status=ActionStatus.succeeded,
                        detail=f"replaced by {new_id}",
                        finished_at=utcnow(),
                    )
                )
                await session.commit()
        await self._start_instance(new_id)

    # ------------------------------------------------------------ drain

    @activity.defn
    async def begin_drain(self, inp: DrainInput) -> bool:
        """ready -> draining and out of routing at once. False when the state forbids draining."""
        await self._set_routable(inp.instance_id, False)
        async with self.sessionmaker() as session:
            try:
                await states.ready_to_draining(
                    session, uuid.UUID(inp.instance_id), reason=TerminationReason(inp.reason)
                )
            except states.IllegalTransitionError:
                return False
        await self._event("instance", inp.instance_id, {})
        return True

    @activity.defn
    async def wait_drained(self, inp: DrainInput) -> StepResult:
        """Wait until the agent reports no request in flight, or the drain deadline."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
        async with self._action(inp.instance_id, "drain") as action:

            async def idle() -> int | None:
                r = await self.http.get(f"{instance.agent_url}/load")
                in_flight = int(r.json().get("in_flight", 0)) if r.status_code == 200 else 1
                return 0 if in_flight == 0 else None

            try:
                await self._poll(idle, inp.timeout_s, inp.poll_interval_s, "requests to finish")
                action.detail = "no request in flight"
            except ApplicationError:
                action.detail = (
                    f"drain deadline ({inp.timeout_s:.0f}s) passed with requests in flight"
                )
            return StepResult(ok=True, detail=action.detail)

    # ------------------------------------------------------------ terminate

    @activity.defn
    async def begin_terminate(self, inp: TerminateInput) -> str:
        """Any live state -> terminating, out of routing. Returns the state the instance is in."""
        await self._set_routable(inp.instance_id, False)
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
            if instance.state in states.LIVE_STATES:
                await states.to_terminating(
                    session,
                    instance.id,
                    reason=TerminationReason(inp.reason),
                    error=inp.error,
                )
            state = (await self._instance(session, inp.instance_id)).state
        await self._event("instance", inp.instance_id, {})
        return state.value

    @activity.defn
    async def discover_volumes(self, ref: InstanceRef) -> VolumePlan:
        """Ask the provider again (nothing forgotten), record what is new, plan deletion."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            adapter = await self._provider_of(session, instance)
        async with self._action(ref.instance_id, "discover_volumes") as action:
            found = []
            if instance.provider_resource_id:
                try:
                    found = await adapter.list_volumes(instance.provider_resource_id)
                except ProviderError as exc:
                    raise provider_failure(exc) from exc
            tagged = [
                v for v in await adapter.list_tagged_volumes() if v.instance_id == ref.instance_id
            ]
            await self._record_volumes(ref.instance_id, found + tagged)
            async with self.sessionmaker() as session:
                rows = (
                    await session.execute(
                        select(InstanceVolume).where(
                            InstanceVolume.instance_id == uuid.UUID(ref.instance_id),  # type: ignore[arg-type]
                            InstanceVolume.state == "attached",  # type: ignore[arg-type]
                        )
                    )
                ).scalars()
                plan = VolumePlan()
                for v in rows:
                    (plan.delete if v.delete_on_terminate else plan.keep).append(
                        v.provider_volume_id
                    )
            action.detail = f"{len(plan.delete)} to delete, {len(plan.keep)} to keep"
        return plan

    async def _find_resource(self, adapter: Compute, instance: Instance) -> str | None:
        if instance.provider_resource_id:
            return instance.provider_resource_id
        # A create that crashed before recording its id: find the machine by its tag.
        for machine in await adapter.list_tagged():
            if machine.instance_id == str(instance.id):
                return machine.resource_id
        return None

    @activity.defn
    async def delete_server(self, ref: InstanceRef) -> None:
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            adapter = await self._provider_of(session, instance)
        async with self._action(ref.instance_id, "delete_server") as action:
            try:
                resource_id = await self._find_resource(adapter, instance)
                if resource_id is None:
                    action.detail = "no machine was created"
                    return
                await adapter.delete(resource_id)
            except ProviderError as exc:
                raise provider_failure(exc) from exc
            action.detail = resource_id

    @activity.defn
    async def confirm_gone(self, inp: StepInput) -> None:
        async with self.sessionmaker() as session:
            instance = await self._instance(session, inp.instance_id)
            adapter = await self._provider_of(session, instance)
        async with self._action(inp.instance_id, "confirm_gone"):
            resource_id = await self._find_resource(adapter, instance)
            if resource_id is None:
                return

            async def gone() -> bool | None:
                return True if await adapter.get(resource_id) is None else None

            await self._poll(gone, inp.timeout_s, inp.poll_interval_s, "the machine to be gone")

    @activity.defn
    async def delete_volume(self, ref: VolumeRef) -> None:
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            adapter = await self._provider_of(session, instance)
        async with self._action(ref.instance_id, "delete_volume", detail=ref.volume_id):
            try:
                await adapter.delete_volume(ref.volume_id)
            except ProviderError as exc:
                raise provider_failure(exc) from exc
            async with self.sessionmaker() as session:
                await session.execute(
                    update(InstanceVolume)
                    .where(
                        InstanceVolume.instance_id == uuid.UUID(ref.instance_id),  # type: ignore[arg-type]
                        InstanceVolume.provider_volume_id == ref.volume_id,  # type: ignore[arg-type]
                    )
                    .values(state="deleted", deleted_at=utcnow())
                )
                await session.commit()

    @activity.defn
    async def finish_termination(self, ref: InstanceRef) -> None:
        """Keep persistent volumes, release IPs, then `terminated`."""
        async with self.sessionmaker() as session:
            instance = await self._instance(session, ref.instance_id)
            adapter = await self._provider_of(session, instance)
            await session.execute(
                update(InstanceVolume)
                .where(
                    InstanceVolume.instance_id == instance.id,  # type: ignore[arg-type]
                    InstanceVolume.state == "attached",  # type: ignore[arg-type]
                )
                .values(state="kept")
            )
            await session.commit()
        if isinstance(adapter, PublicIPMixin) and instance.provider_resource_id:
            async with self._action(ref.instance_id, "release_ips") as action:
                released = await adapter.release_ips(instance.provider_resource_id, ref.instance_id)
                action.detail = ", ".join(released) or "none"
        await self.redis.hdel(INSTANCE_LOAD, ref.instance_id)
        async with self.sessionmaker() as session:
            if instance.state == InstanceState.terminating:
                await states.terminating_to_terminated(session, instance.id)
        await self._event("instance", ref.instance_id, {})

    @activity.defn
    async def archive(self, ref: InstanceRef) -> None:
        async with self.sessionmaker() as session:
            await states.to_archived(session, uuid.UUID(ref.instance_id))
        await self._event("instance", ref.instance_id, {})
