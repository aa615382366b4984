"""What every instance activity works with: the clients, the instance and its adapter loaded once
per call, provider errors translated once, the action log, events and the routing registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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

from activities.providers.base import Compute, ProviderError, ProviderVolume
from core.events import EventKind, publish_event
from core.models import (
    ActionStatus,
    Deployment,
    Instance,
    InstanceAction,
    InstanceAttention,
    InstanceType,
    InstanceVolume,
    Provider,
    utcnow,
)
from core.progress import Step
from core.redis_keys import ROUTING_CHANNEL, ROUTING_REGISTRY
from core.settings import Settings
from core.tokens import agent_token, engine_api_key
from core.wire import RegistryChange, RoutableInstance

log = logging.getLogger(__name__)
T = TypeVar("T")


def provider_failure(exc: ProviderError) -> ApplicationError:
    """A typed provider error as a Temporal failure; non-retryable ones stop retries at once."""
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=not exc.retryable)


@dataclass
class AtProvider:
    """An instance and the adapter of its provider, as one activity call loaded them."""

    instance: Instance
    adapter: Compute


def attempt_number() -> int:
    """The attempt of the running activity (1 outside one)."""
    return activity.info().attempt if activity.in_activity() else 1


async def _heartbeat_forever(detail: str, interval_s: float = 2.0) -> None:
    while True:
        activity.heartbeat(detail)
        await asyncio.sleep(interval_s)


class InstanceContext:
    """Built once per worker; every phase's activity class holds the same one."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        providers: dict[str, Compute],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.providers = providers
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))

    async def close(self) -> None:
        await self.http.aclose()

    def agent_headers(self, instance_id: str) -> dict[str, str]:
        """The instance's own token, which the agent's /info and /load require (derived, never
        stored or carried in workflow history)."""
        token = agent_token(self.settings.require("secret_key"), instance_id)
        return {"Authorization": f"Bearer {token}"}

    def engine_headers(self, instance_id: str) -> dict[str, str]:
        """The instance's engine API key (vLLM's --api-key), which the engine's /v1 requires."""
        key = engine_api_key(self.settings.require("secret_key"), instance_id)
        return {"Authorization": f"Bearer {key}"}

    # ------------------------------------------------------------ loading

    async def instance(self, instance_id: str) -> Instance:
        async with self.sessionmaker() as session:
            return await self.instance_in(session, instance_id)

    async def instance_in(self, session: AsyncSession, instance_id: str) -> Instance:
        """The instance's row in this session; a missing one is a non-retryable failure."""
        instance = await session.get(Instance, uuid.UUID(instance_id))
        if instance is None:
            raise ApplicationError(f"instance {instance_id} does not exist", non_retryable=True)
        return instance

    @contextlib.asynccontextmanager
    async def at_provider(
        self, instance_id: str, *, always_retry: bool = False
    ) -> AsyncIterator[AtProvider]:
        """The instance and its adapter, loaded once. A `ProviderError` raised inside becomes a
        Temporal failure, retryable or not as the error says; with `always_retry` (cleanup, which
        must never give up: revoked credentials get fixed) every one is retryable."""
        async with self.sessionmaker() as session:
            instance = await self.instance_in(session, instance_id)
            provider = await session.get(Provider, instance.provider_id)
        assert provider is not None
        adapter = self.providers.get(provider.kind)
        if adapter is None:
            raise ApplicationError(
                f"provider {provider.name!r} ({provider.kind}) is not enabled on this worker",
                type="ProviderNotEnabled",
            )
        try:
            yield AtProvider(instance, adapter)
        except ProviderError as exc:
            failure = provider_failure(exc)
            if always_retry:
                failure = ApplicationError(str(exc), type=type(exc).__name__)
            raise failure from exc

    async def provider_of(self, instance: Instance) -> Provider:
        async with self.sessionmaker() as session:
            provider = await session.get(Provider, instance.provider_id)
        assert provider is not None
        return provider

    async def deployment_of(self, instance: Instance) -> Deployment:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, instance.deployment_id)
        assert deployment is not None
        return deployment

    async def instance_type_of(self, instance: Instance) -> InstanceType:
        async with self.sessionmaker() as session:
            itype = await session.get(InstanceType, instance.instance_type_id)
        assert itype is not None
        return itype

    # ------------------------------------------------------------ writing

    async def update_instance(self, instance_id: str, **values: Any) -> None:
        async with self.sessionmaker() as session:
            await session.execute(
                update(Instance)
                .where(Instance.id == uuid.UUID(instance_id))  # type: ignore[arg-type]
                .values(**values, updated_at=utcnow())
            )
            await session.commit()

    async def record_volumes(self, instance_id: str, volumes: list[ProviderVolume]) -> None:
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

    # ------------------------------------------------------------ the action log

    @contextlib.asynccontextmanager
    async def action(
        self, instance_id: str, step: Step, detail: str | None = None, *, retried: bool = False
    ) -> AsyncIterator[InstanceAction]:
        """Record one action: running now, then succeeded or failed with the error text (with
        `retried`, "retrying (attempt n): <error>", for a step Temporal tries again).

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
        await self.event(EventKind.action, instance_id, {"step": step, "status": "running"})
        beat = asyncio.create_task(_heartbeat_forever(step)) if activity.in_activity() else None
        try:
            yield action
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                error = "cancelled"
            elif retried:
                error = f"retrying (attempt {attempt_number()}): {error}"
            await self._finish_action(action, ActionStatus.failed, error=error)
            raise
        else:
            await self._finish_action(action, ActionStatus.succeeded)
        finally:
            if beat is not None:
                beat.cancel()

    @contextlib.asynccontextmanager
    async def cleanup_step(
        self, instance_id: str, step: Step, detail: str | None = None
    ) -> AsyncIterator[InstanceAction]:
        """A cleanup step's action. It never gives up: each failure is logged as "retrying
        (attempt n): <error>"; from `cleanup_attention_after_attempts` on, the instance is flagged
        as needing attention (what is left at the provider, what to do), and the flag clears
        when the step succeeds."""
        try:
            async with self.action(instance_id, step, detail, retried=True) as action:
                yield action
        except Exception as exc:
            attempts = attempt_number()
            if attempts >= self.settings.cleanup_attention_after_attempts:
                await self.flag_attention(
                    instance_id, step, str(exc) or type(exc).__name__, attempts
                )
            raise
        await self.clear_attention(instance_id, step)

    async def flag_attention(self, instance_id: str, step: str, error: str, attempts: int) -> None:
        """Mark the instance as needing an operator; an event the first time. Best effort: the
        database may be what fails."""
        try:
            async with self.sessionmaker() as session:
                instance = await self.instance_in(session, instance_id)
                first = instance.attention is None
                volumes = (
                    await session.execute(
                        select(col(InstanceVolume.provider_volume_id)).where(
                            InstanceVolume.instance_id == instance.id,  # type: ignore[arg-type]
                            col(InstanceVolume.state) != "deleted",
                        )
                    )
                ).scalars()
                leaked = [r for r in [instance.provider_resource_id, *volumes] if r]
                since = utcnow() if first else instance.attention["since"]  # type: ignore[index]
                attention = InstanceAttention(
                    step=step,
                    error=error,
                    attempts=attempts,
                    since=since,
                    leaked=leaked,
                    hint=(
                        f"{step} keeps failing at the provider. Check the provider's credentials, "
                        "quotas and status page; the step retries every "
                        f"{self.settings.cleanup_max_interval_s:.0f}s at most and finishes by "
                        "itself once the cause is fixed. Until then these resources may still "
                        "cost money: " + (", ".join(leaked) or "none recorded")
                    ),
                )
                instance.attention = attention.model_dump(mode="json")
                session.add(instance)
                await session.commit()
        except Exception:
            log.exception("could not flag %s as needing attention", instance_id)
            return
        log.warning("instance %s needs attention: %s failing (%s)", instance_id, step, error)
        if first:
            await self.event(
                EventKind.attention, instance_id, {"attention": attention.model_dump(mode="json")}
            )

    async def clear_attention(self, instance_id: str, step: str | None = None) -> None:
        """The flag set by `step` (any step when None) is lifted: the cause was fixed."""
        async with self.sessionmaker() as session:
            instance = await self.instance_in(session, instance_id)
            if instance.attention is None:
                return
            if step is not None and instance.attention.get("step") != step:
                return
            instance.attention = None
            session.add(instance)
            await session.commit()
        log.info("instance %s no longer needs attention: %s succeeded", instance_id, step)
        await self.event(EventKind.attention, instance_id, {"attention": None})

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
        await self.event(
            EventKind.action,
            str(action.instance_id),
            {"step": action.step, "status": status.value, "error": error},
        )

    async def event(self, kind: EventKind, instance_id: str, data: dict[str, Any]) -> None:
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

    # ------------------------------------------------------------ waiting

    async def poll(
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

    # ------------------------------------------------------------ routing registry

    async def set_routable(self, instance_id: str, routable: bool) -> None:
        """Put the instance in the gateway's routing registry, or take it out."""
        if not routable:
            await self.redis.hdel(ROUTING_REGISTRY, instance_id)
            change = RegistryChange(op="remove", instance_id=instance_id)
            await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())
            return
        instance = await self.instance(instance_id)
        deployment = await self.deployment_of(instance)
        itype = await self.instance_type_of(instance)
        if instance.engine_url is None:
            raise ApplicationError(f"instance {instance_id} has no engine URL", non_retryable=True)
        entry = RoutableInstance(
            instance_id=instance_id,
            deployment_id=str(deployment.id),
            project_id=str(deployment.project_id),
            model=deployment.served_name,
            engine_url=instance.engine_url,
            agent_url=instance.agent_url,
            gpu_count=max(itype.gpu_count, 1),
            routing=deployment.routing,
        )
        await self.redis.hset(ROUTING_REGISTRY, instance_id, entry.model_dump_json())
        change = RegistryChange(op="put", instance_id=instance_id, instance=entry)
        await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())
