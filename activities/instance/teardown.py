"""Teardown: terminating, volumes discovered, the machine deleted and confirmed gone, volumes
deleted or kept, addresses released, then terminated and (after the retention) archived.

`delete_server` asks the provider and returns; `confirm_gone` checks once and raises a retryable
`ResourceNotYetGoneError` while the machine exists, so Temporal's retry policy does the waiting.

Every step here may be retried for ever (a machine left at a provider costs money): provider
errors are all retryable here, each failure is in the action log as "retrying (attempt n)", and
one that keeps failing flags the instance as needing attention until it succeeds.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlmodel import select
from temporalio import activity

from activities.contracts import (
    AttentionInput,
    InstanceRef,
    TerminateInput,
    VolumePlan,
    VolumeRef,
)
from activities.instance.context import AtProvider, InstanceContext, attempt_number
from activities.providers.base import (
    ProviderError,
    ProviderVolume,
    PublicIPMixin,
    ResourceNotYetGoneError,
)
from core import states
from core.events import EventKind
from core.models import InstanceState, InstanceVolume, utcnow
from core.progress import Step
from core.redis_keys import INSTANCE_LOAD


async def _find_resource(at: AtProvider) -> str | None:
    if at.instance.provider_resource_id:
        return at.instance.provider_resource_id
    # A create that crashed before recording its id: find the machine by its tag.
    for machine in await at.adapter.list_tagged():
        if machine.instance_id == str(at.instance.id):
            return machine.resource_id
    return None


class TeardownActivities:
    def __init__(self, ctx: InstanceContext) -> None:
        self.ctx = ctx

    @activity.defn
    async def begin_terminate(self, inp: TerminateInput) -> InstanceState:
        """Any live state -> terminating, out of routing. Returns the state the instance is in."""
        await self.ctx.set_routable(inp.instance_id, False)
        async with self.ctx.sessionmaker() as session:
            instance = await self.ctx.instance_in(session, inp.instance_id)
            if instance.state in states.LIVE_STATES:
                await states.to_terminating(
                    session, instance.id, reason=inp.reason, error=inp.error
                )
            state = (await self.ctx.instance_in(session, inp.instance_id)).state
        await self.ctx.event(EventKind.instance, inp.instance_id, {})
        return state

    @activity.defn
    async def discover_volumes(self, ref: InstanceRef) -> VolumePlan:
        """Ask the provider again (nothing forgotten), record what is new, plan deletion."""
        async with (
            self.ctx.at_provider(ref.instance_id, always_retry=True) as at,
            self.ctx.cleanup_step(ref.instance_id, Step.discover_volumes) as action,
        ):
            found: list[ProviderVolume] = []
            if at.instance.provider_resource_id:
                found = await at.adapter.list_volumes(at.instance.provider_resource_id)
            tagged = [
                v
                for v in await at.adapter.list_tagged_volumes()
                if v.instance_id == ref.instance_id
            ]
            await self.ctx.record_volumes(ref.instance_id, found + tagged)
            async with self.ctx.sessionmaker() as session:
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

    @activity.defn
    async def delete_server(self, ref: InstanceRef) -> None:
        """Ask the provider to delete the machine; `confirm_gone` sees it through."""
        async with (
            self.ctx.at_provider(ref.instance_id, always_retry=True) as at,
            self.ctx.cleanup_step(ref.instance_id, Step.delete_server) as action,
        ):
            resource_id = await _find_resource(at)
            if resource_id is None:
                action.detail = "no machine was created"
                return
            await at.adapter.delete(resource_id)
            action.detail = resource_id

    @activity.defn
    async def confirm_gone(self, ref: InstanceRef) -> None:
        """One look at the provider: retryable `ResourceNotYetGoneError` while the machine is
        there. Only the sighting of it gone is recorded, not every look before it."""
        async with self.ctx.at_provider(ref.instance_id, always_retry=True) as at:
            resource_id = await _find_resource(at)
            if resource_id is not None:
                try:
                    await at.adapter.confirm_gone(resource_id)
                except ResourceNotYetGoneError:
                    raise  # waiting, not failing
                except ProviderError as exc:
                    if attempt_number() >= self.ctx.settings.cleanup_attention_after_attempts:
                        await self.ctx.flag_attention(
                            ref.instance_id, Step.confirm_gone, str(exc), attempt_number()
                        )
                    raise
        await self.ctx.clear_attention(ref.instance_id, Step.confirm_gone)
        attempt = activity.info().attempt
        async with self.ctx.action(ref.instance_id, Step.confirm_gone) as action:
            action.detail = f"{resource_id or 'no machine'} gone (look {attempt})"

    @activity.defn
    async def delete_volume(self, ref: VolumeRef) -> None:
        async with (
            self.ctx.at_provider(ref.instance_id, always_retry=True) as at,
            self.ctx.cleanup_step(ref.instance_id, Step.delete_volume, detail=ref.volume_id),
        ):
            await at.adapter.delete_volume(ref.volume_id)
            async with self.ctx.sessionmaker() as session:
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
        """Keep persistent volumes (no longer attached to anything), release IPs, then
        `terminated`. Also ends the provider_deleted path, where the state stays."""
        async with self.ctx.at_provider(ref.instance_id, always_retry=True) as at:
            instance = at.instance
            async with self.ctx.sessionmaker() as session:
                await session.execute(
                    update(InstanceVolume)
                    .where(
                        InstanceVolume.instance_id == instance.id,  # type: ignore[arg-type]
                        InstanceVolume.state == "attached",  # type: ignore[arg-type]
                    )
                    .values(state="kept")
                )
                await session.commit()
            if isinstance(at.adapter, PublicIPMixin) and instance.provider_resource_id:
                async with self.ctx.cleanup_step(ref.instance_id, Step.release_ips) as action:
                    released = await at.adapter.release_ips(
                        instance.provider_resource_id, ref.instance_id
                    )
                    action.detail = ", ".join(released) or "none"
        await self.ctx.redis.hdel(INSTANCE_LOAD, ref.instance_id)
        await self.ctx.clear_attention(ref.instance_id)
        async with self.ctx.sessionmaker() as session:
            if instance.state == InstanceState.terminating:
                await states.terminating_to_terminated(session, instance.id)
        await self.ctx.event(EventKind.instance, ref.instance_id, {})

    @activity.defn
    async def flag_attention(self, inp: AttentionInput) -> None:
        """A cleanup step failed in a way Temporal does not retry: the workflow retries it itself
        and says so on the instance."""
        await self.ctx.flag_attention(inp.instance_id, inp.step, inp.error, inp.attempts)

    @activity.defn
    async def archive(self, ref: InstanceRef) -> None:
        async with self.ctx.sessionmaker() as session:
            await states.to_archived(session, uuid.UUID(ref.instance_id))
        await self.ctx.event(EventKind.instance, ref.instance_id, {})
