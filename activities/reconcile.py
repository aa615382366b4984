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
from activities.providers.base import Compute, ProviderError, ProviderInstance, ProviderVolume
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
# Starts an instance's workflow unless it runs already (its id derived from the instance's);
# True when it started one:
ResumeInstance = Callable[[uuid.UUID], Awaitable[bool]]

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
        resume_instance: ResumeInstance,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.providers = providers
        self.report_provider_deleted = report_provider_deleted
        self.ensure_autoscaler = ensure_autoscaler
        self.resume_instance = resume_instance

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
        # The providers first, the database after: states never go back from terminating, so a
        # machine absent from a listing taken before the rows were read was not deleted by a
        # termination these rows do not show yet. An instance being deleted is never relabelled.
        listings: dict[str, tuple[list[ProviderInstance], list[ProviderVolume]]] = {}
        for kind, adapter in self.providers.items():
            try:
                listings[kind] = (await adapter.list_tagged(), await adapter.list_tagged_volumes())
            except ProviderError as exc:
                log.warning("reconciler: cannot list %s resources: %s", kind, exc)
            activity.heartbeat(kind)
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(select(Instance, col(Provider.kind)).join(Provider))
            ).all()
        instances = {str(i.id): (i, kind) for i, kind in rows}
        now = datetime.now(UTC)
        for kind, (machines, volumes) in listings.items():
            adapter = self.providers[kind]
            present = {m.resource_id for m in machines}
            for instance, pkind in instances.values():
                resource_id = instance.provider_resource_id
                if (
                    pkind != kind
                    or instance.state not in EXPECT_MACHINE
                    or not resource_id
                    or resource_id in present
                ):
                    continue
                # Listings are eventually consistent (a booting machine may not be in one yet):
                # missing for `missing_grace_s` and not found when asked for directly, it is gone.
                first_missing = inp.missing_since.get(resource_id, now.timestamp())
                result.missing_since[resource_id] = first_missing
                if now.timestamp() - first_missing < inp.missing_grace_s:
                    continue
                if await self._still_there(adapter, resource_id):
                    continue
                if await self._provider_deleted(instance):
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
                except ProviderError as exc:  # powering off first, or failing: next round
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
                try:
                    await adapter.delete_volume(volume.volume_id)
                except ProviderError as exc:
                    log.info("reconciler: orphan volume %s not deleted: %s", volume.volume_id, exc)
                    continue
                await self._log_action(
                    owner[0], Step.orphan_volume_deleted, f"{kind} volume {volume.volume_id}"
                )
                result.orphan_volumes_deleted.append(volume.volume_id)
        result.workflows_resumed = await self._resume_provisioning(instances, now, inp)
        await self._ensure_autoscalers()
        return result

    async def _resume_provisioning(
        self, instances: dict[str, tuple[Instance, str]], now: datetime, inp: ReconcileInput
    ) -> list[str]:
        """Start the workflow of every row still `provisioning` after `orphan_grace_s`. The
        autoscaler and replacements commit their row, then start its workflow from an activity:
        a crash or a Temporal outage between the two leaves a row that nothing would carry on.
        A start is a no-op while its workflow runs, so this is safe on every round."""
        resumed = []
        for instance, _ in instances.values():
            if instance.state != InstanceState.provisioning:
                continue
            created = instance.created_at.replace(tzinfo=instance.created_at.tzinfo or UTC)
            if (now - created).total_seconds() < inp.orphan_grace_s:
                continue
            try:
                started = await self.resume_instance(instance.id)
            except Exception:
                log.exception("reconciler: could not start the workflow of %s", instance.id)
                continue
            if started:
                await self._log_action(
                    instance, Step.workflow_resumed, "row in provisioning had no running workflow"
                )
                resumed.append(str(instance.id))
        return resumed

    async def _still_there(self, adapter: Compute, resource_id: str) -> bool:
        """Asked for directly, the machine exists, or the provider cannot tell yet."""
        try:
            return await adapter.get(resource_id) is not None
        except ProviderError as exc:
            log.info("reconciler: %s not confirmed gone: %s", resource_id, exc)
            return True

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

    async def _provider_deleted(self, instance: Instance) -> bool:
        """Mark it provider_deleted (only from a state in which its machine must exist; the row
        is locked and checked again) and tell its workflow."""
        async with self.sessionmaker() as session:
            try:
                changed = await states.mark_provider_deleted(
                    session, uuid.UUID(str(instance.id)), EXPECT_MACHINE
                )
            except states.IllegalTransitionError:
                return False  # it moved on meanwhile (terminating: being deleted on purpose)
        if not changed:
            return False
        await self._log_action(instance, Step.provider_deleted, "machine not found at the provider")
        try:
            await self.report_provider_deleted(instance.workflow_id)
        except Exception:
            log.exception("could not signal %s", instance.workflow_id)
        return True
