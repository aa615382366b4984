"""Reconciler activity: compare each provider's tagged resources with the database."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.contracts import ReconcileInput, ReconcileResult
from activities.providers.base import Compute, ProviderError, ResourceNotYetGoneError
from core import states
from core.events import EventKind, publish_event
from core.models import (
    ActionStatus,
    Deployment,
    Instance,
    InstanceAction,
    InstanceState,
    Provider,
    utcnow,
)
from core.progress import Step

log = logging.getLogger(__name__)

# The worker passes these, built on workflows/client.py (activities never import workflows).
# Tells an instance's workflow its machine is gone (by workflow id):
ReportProviderDeleted = Callable[[str], Awaitable[None]]
# Starts a deployment's autoscaler unless it runs already:
EnsureAutoscaler = Callable[[uuid.UUID], Awaitable[None]]

# Instances whose machine must exist at the provider: their absence means it was deleted there.
# (provisioning may not have a machine yet; terminating is deleting it on purpose.)
EXPECT_MACHINE = frozenset({InstanceState.booting, InstanceState.ready, InstanceState.draining})


class ReconcileActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        providers: dict[str, Compute],
        report_provider_deleted: ReportProviderDeleted,
        ensure_autoscaler: EnsureAutoscaler,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.providers = providers
        self.report_provider_deleted = report_provider_deleted
        self.ensure_autoscaler = ensure_autoscaler

    async def _log_action(self, instance: Instance | None, step: Step, detail: str) -> None:
        log.warning("reconciler: %s %s", step, detail)
        project = str(instance.project_id) if instance else None
        if instance is not None:
            async with self.sessionmaker() as session:
                session.add(
                    InstanceAction(
                        instance_id=instance.id,
                        step=step,
                        status=ActionStatus.succeeded,
                        detail=detail,
                        finished_at=utcnow(),
                    )
                )
                await session.commit()
        await publish_event(
            self.redis, EventKind.reconciler, project, {"step": step, "detail": detail}
        )

    @activity.defn
    async def reconcile_once(self, inp: ReconcileInput) -> ReconcileResult:
        result = ReconcileResult()
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(select(Instance, col(Provider.kind)).join(Provider))
            ).all()
        instances = {str(i.id): (i, kind) for i, kind in rows}
        now = datetime.now(UTC)
        for kind, adapter in self.providers.items():
            try:
                machines = await adapter.list_tagged()
                volumes = await adapter.list_tagged_volumes()
            except ProviderError as exc:
                log.warning("reconciler: cannot list %s resources: %s", kind, exc)
                continue
            activity.heartbeat(kind)
            present = {m.resource_id for m in machines}
            for instance, pkind in instances.values():
                if (
                    pkind == kind
                    and instance.state in EXPECT_MACHINE
                    and instance.provider_resource_id
                    and instance.provider_resource_id not in present
                ):
                    await self._provider_deleted(instance)
                    result.provider_deleted.append(str(instance.id))
            for machine in machines:
                owner = instances.get(machine.instance_id)
                if owner is not None and owner[0].state in states.LIVE_STATES:
                    continue
                age = (now - machine.created_at).total_seconds() if machine.created_at else None
                if age is not None and age < inp.orphan_grace_s:
                    continue  # just created: its instance row may not say so yet
                try:
                    await adapter.delete(machine.resource_id)
                except ResourceNotYetGoneError as exc:  # powering off first: next round deletes it
                    log.info("reconciler: orphan %s not deleted yet: %s", machine.resource_id, exc)
                    continue
                await self._log_action(
                    owner[0] if owner else None,
                    Step.orphan_deleted,
                    f"{kind} machine {machine.resource_id} had no live instance",
                )
                result.orphans_deleted.append(machine.resource_id)
            for volume in volumes:
                owner = instances.get(volume.instance_id) if volume.instance_id else None
                if owner is None or owner[0].state not in states.FINAL_STATES:
                    continue  # live instances own their volumes; unknown ones wait for a person
                if not volume.delete_on_terminate:
                    continue  # persistent volumes outlive their instance on purpose
                await adapter.delete_volume(volume.volume_id)
                await self._log_action(
                    owner[0], Step.orphan_volume_deleted, f"{kind} volume {volume.volume_id}"
                )
                result.orphan_volumes_deleted.append(volume.volume_id)
        await self._ensure_autoscalers()
        return result

    async def _ensure_autoscalers(self) -> None:
        """Every deployment with autoscaling on has its autoscaler running (the API starts it at
        once; this catches one started while the API could not reach Temporal)."""
        async with self.sessionmaker() as session:
            ids = (
                await session.exec(
                    select(col(Deployment.id)).where(col(Deployment.autoscaling_enabled))
                )
            ).all()
        for deployment_id in ids:
            await self.ensure_autoscaler(deployment_id)

    async def _provider_deleted(self, instance: Instance) -> None:
        async with self.sessionmaker() as session:
            changed = await states.mark_provider_deleted(session, uuid.UUID(str(instance.id)))
        if not changed:
            return
        await self._log_action(instance, Step.provider_deleted, "machine not found at the provider")
        try:
            await self.report_provider_deleted(instance.workflow_id)
        except Exception:
            log.exception("could not signal %s", instance.workflow_id)
