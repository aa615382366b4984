"""Provisioning: what the workflow needs to know, the request recorded, the machine created."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import CreateResult, FailInput, InstanceRef, LifecycleSpec
from activities.instance.context import InstanceContext
from activities.providers.base import CreateRequest, InvalidRequestError, VolumeSpec
from activities.providers.flavors import get_flavor
from agent.identity import expected_agent
from core import states
from core.events import EventKind
from core.models import ActionStatus, Instance, InstanceAction, InstanceState
from core.progress import Step
from core.settings import Settings
from core.tokens import agent_token, engine_api_key, token_hash


def insecure_agent_url(url: str, kind: str, settings: Settings) -> str | None:
    """Why a machine of `kind` must not get `url` for its bundle and heartbeats, or None.

    Over plain http the agent token, in every heartbeat, and the bundle cross the network
    readable and changeable on the way. The local provider (dev) and a loopback address never
    leave the host; anything else needs https unless INVENTIV_ALLOW_INSECURE_AGENT_URL says so."""
    parts = urlsplit(url)
    if kind == "local" or parts.scheme != "http" or settings.allow_insecure_agent_url:
        return None
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"refusing to give this {kind} machine the plain-http API URL {url}: its agent token and "
        "bundle would cross the network in clear; set INVENTIV_PUBLIC_API_URL to an https:// "
        "URL (or INVENTIV_ALLOW_INSECURE_AGENT_URL=true on a network you trust)"
    )


# How long a workflow waits for the row its starter commits just after starting it.
ROW_WAIT_S = 60.0


class ProvisionActivities:
    def __init__(self, ctx: InstanceContext) -> None:
        self.ctx = ctx

    @activity.defn
    async def load_spec(self, ref: InstanceRef) -> LifecycleSpec:
        """What the workflow needs. The API starts the workflow before it commits the row (so a
        row never exists without its workflow): a row not there yet is waited for (retryable
        `InstanceRowMissing`); the workflow gives up on it after a bound."""
        s = self.ctx.settings
        async with self.ctx.sessionmaker() as session:
            found = await session.get(Instance, uuid.UUID(ref.instance_id))
        if found is None:
            waited = (datetime.now(UTC) - activity.info().scheduled_time).total_seconds()
            raise ApplicationError(
                f"instance {ref.instance_id} has no row after {waited:.0f}s",
                type="InstanceRowMissing",
                non_retryable=waited > ROW_WAIT_S,
            )
        instance = found
        deployment = await self.ctx.deployment_of(instance)
        provider = await self.ctx.provider_of(instance)
        return LifecycleSpec(
            instance_id=ref.instance_id,
            deployment_id=str(instance.deployment_id),
            provider=provider.kind,
            state=instance.state,
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
            delete_confirm_timeout_s=s.delete_confirm_timeout_s,
            cleanup_max_interval_s=s.cleanup_max_interval_s,
        )

    @activity.defn
    async def record_request(self, ref: InstanceRef) -> None:
        async with self.ctx.sessionmaker() as session:
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
            async with self.ctx.action(ref.instance_id, Step.request_created):
                pass

    @activity.defn
    async def provider_create(self, ref: InstanceRef) -> CreateResult:
        """Create the machine (or find the one a previous attempt made), record its volumes."""
        settings = self.ctx.settings
        async with self.ctx.at_provider(ref.instance_id) as at:
            deployment = await self.ctx.deployment_of(at.instance)
            itype = await self.ctx.instance_type_of(at.instance)
            token = agent_token(settings.require("secret_key"), ref.instance_id)
            version, checksum = expected_agent(settings.expected_agent_version)
            volumes = [
                VolumeSpec(
                    size_gb=float(v.get("size_gb", 10)),
                    volume_type=str(v.get("volume_type", "data")),
                    delete_on_terminate=bool(v.get("delete_on_terminate", True)),
                )
                for v in deployment.engine_args.get("volumes", [])
            ]
            engine_args = get_flavor(deployment.flavor).engine_args_for(
                deployment.model,
                {k: v for k, v in deployment.engine_args.items() if k != "volumes"},
                gpu_memory_gb=itype.gpu_memory_gb,
                gpu_count=max(itype.gpu_count, 1),
            )
            request = CreateRequest(
                instance_id=ref.instance_id,
                instance_type=itype.name,
                model=deployment.model,
                served_name=deployment.served_name,
                flavor=deployment.flavor,
                zone=itype.zones[0] if itype.zones else None,
                engine_args=engine_args,
                agent_env={
                    "INVENTIV_AGENT_CONTROL_PLANE_URL": settings.api_url,
                    "INVENTIV_AGENT_TOKEN": token,
                    "INVENTIV_AGENT_ENGINE_API_KEY": engine_api_key(
                        settings.require("secret_key"), ref.instance_id
                    ),
                    "WORKER_AGENT_URL": f"{settings.api_url}/api/v1/agents/bundle",
                    "WORKER_AGENT_SHA256": checksum,
                },
                volumes=volumes,
                gpu_count=max(itype.gpu_count, 1),
            )
            async with self.ctx.action(ref.instance_id, Step.provider_create) as action:
                refused = insecure_agent_url(settings.api_url, at.adapter.kind, settings)
                if refused is not None:
                    raise InvalidRequestError(refused)
                machine = await at.adapter.create(request)
                action.detail = f"{machine.resource_id} (agent {version})"
                await self.ctx.update_instance(
                    ref.instance_id,
                    provider_resource_id=machine.resource_id,
                    zone=machine.zone,
                    agent_token_hash=token_hash(token),
                )
                await self.ctx.record_volumes(ref.instance_id, machine.volumes)
        async with self.ctx.sessionmaker() as session:
            await states.provisioning_to_booting(session, uuid.UUID(ref.instance_id))
        await self.ctx.event(EventKind.instance, ref.instance_id, {})
        return CreateResult(resource_id=machine.resource_id)

    @activity.defn
    async def fail_startup(self, inp: FailInput) -> None:
        async with self.ctx.sessionmaker() as session:
            instance = await self.ctx.instance_in(session, inp.instance_id)
            if instance.state == InstanceState.provisioning:
                await states.provisioning_to_startup_failed(
                    session, instance.id, reason=inp.reason, error=inp.error
                )
            elif instance.state == InstanceState.booting:
                await states.booting_to_startup_failed(
                    session, instance.id, reason=inp.reason, error=inp.error
                )
        await self.ctx.event(EventKind.instance, inp.instance_id, {"error": inp.error})
