"""Instances: list, detail (progress, current step, history, actions, volumes), drain, terminate."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import col, func, select
from temporalio.client import Client

from agent.identity import bundled_agent
from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, SessionDep, SettingsDep, TemporalDep
from api.errors import ERRORS
from core.models import (
    Instance,
    InstanceAction,
    InstanceAttention,
    InstanceMetric,
    InstanceState,
    InstanceStateHistory,
    InstanceType,
    InstanceVolume,
    Provider,
    TerminationReason,
)
from core.progress import current_step, progress_percent
from workflows import client as orchestration
from workflows.client import (
    CommandRefusedError,
    OrchestratorUnavailableError,
    WorkflowNotRunningError,
)

router = APIRouter(prefix="/instances", tags=["instances"], responses=ERRORS)


class InstanceSummary(BaseModel):
    id: uuid.UUID
    deployment_id: uuid.UUID
    project_id: uuid.UUID
    state: InstanceState
    progress: int
    current_step: str | None
    provider_resource_id: str | None
    ip_address: str | None
    termination_reason: TerminationReason | None
    error: str | None
    agent_version: str | None
    agent_integrity_ok: bool | None
    attention: InstanceAttention | None = Field(
        default=None,
        description="Set while a cleanup step keeps failing: what is left at the provider and "
        "what to do; the step keeps retrying and this clears once it succeeds",
    )
    workflow_id: str
    created_at: datetime
    ready_at: datetime | None
    terminated_at: datetime | None


class StateChange(BaseModel):
    from_state: InstanceState | None
    to_state: InstanceState
    reason: str | None
    at: datetime


class ActionPublic(BaseModel):
    step: str
    status: str
    detail: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


class VolumePublic(BaseModel):
    provider_volume_id: str
    volume_type: str
    size_gb: float
    is_boot: bool
    delete_on_terminate: bool
    state: str


class MetricSample(BaseModel):
    at: datetime
    gpu_utilization: float | None
    gpu_memory_used_mb: float | None
    gpu_memory_total_mb: float | None
    gpu_temperature_c: float | None
    gpu_power_w: float | None
    cpu_percent: float | None
    ram_percent: float | None
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage: float | None


AgentStatus = Literal["unknown", "ok", "mismatch"]


class InstanceDetail(InstanceSummary):
    provider: str
    instance_type: str
    price_per_hour: float
    currency: str
    zone: str | None
    engine_url: str | None
    agent_url: str | None
    agent_checksum: str | None
    agent_status: AgentStatus = Field(
        description="unknown before the first heartbeat; mismatch: not the agent we ship"
    )
    expected_agent_version: str
    last_heartbeat_at: datetime | None
    latest_metrics: MetricSample | None
    history: list[StateChange]
    actions: list[ActionPublic]
    volumes: list[VolumePublic]
    temporal_url: str


class InstancePage(BaseModel):
    items: list[InstanceSummary]
    total: int


def summarize(instance: Instance, actions: list[InstanceAction]) -> InstanceSummary:
    return InstanceSummary(
        **instance.model_dump(include=set(InstanceSummary.model_fields)),
        progress=progress_percent(actions),
        current_step=current_step(actions),
    )


def action_public(a: InstanceAction) -> ActionPublic:
    duration = (a.finished_at - a.started_at).total_seconds() * 1000 if a.finished_at else None
    return ActionPublic(**a.model_dump(exclude={"id", "instance_id"}), duration_ms=duration)


async def get_visible_instance(
    session: SessionDep, user: CurrentUser, instance_id: uuid.UUID
) -> Instance:
    instance = await session.get(Instance, instance_id)
    if instance is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance {instance_id} not found")
    await require_project(session, user, instance.project_id)
    return instance


@router.get("", response_model=InstancePage)
async def list_instances(
    session: SessionDep,
    user: CurrentUser,
    state: InstanceState | None = None,
    deployment_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    provider: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0),
) -> InstancePage:
    query = select(Instance)
    if state is not None:
        query = query.where(Instance.state == state)
    if deployment_id is not None:
        query = query.where(Instance.deployment_id == deployment_id)
    if project_id is not None:
        query = query.where(Instance.project_id == project_id)
    if provider is not None:
        query = query.join(Provider).where(Provider.name == provider)
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(col(Instance.project_id).in_(visible))
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    page = query.order_by(col(Instance.created_at).desc()).limit(limit).offset(offset)
    instances = list((await session.exec(page)).all())
    by_instance: dict[uuid.UUID, list[InstanceAction]] = defaultdict(list)
    if instances:
        actions = await session.exec(
            select(InstanceAction).where(
                col(InstanceAction.instance_id).in_([i.id for i in instances])
            )
        )
        for a in actions.all():
            by_instance[a.instance_id].append(a)
    return InstancePage(items=[summarize(i, by_instance[i.id]) for i in instances], total=total)


@router.get("/{instance_id}", response_model=InstanceDetail)
async def get_instance(
    instance_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> InstanceDetail:
    instance = await get_visible_instance(session, user, instance_id)
    actions = list(
        (
            await session.exec(
                select(InstanceAction)
                .where(InstanceAction.instance_id == instance_id)
                .order_by(col(InstanceAction.started_at), col(InstanceAction.id))
            )
        ).all()
    )
    history = (
        await session.exec(
            select(InstanceStateHistory)
            .where(InstanceStateHistory.instance_id == instance_id)
            .order_by(col(InstanceStateHistory.at), col(InstanceStateHistory.id))
        )
    ).all()
    volumes = (
        await session.exec(select(InstanceVolume).where(InstanceVolume.instance_id == instance_id))
    ).all()
    latest = (
        await session.exec(
            select(InstanceMetric)
            .where(InstanceMetric.instance_id == instance_id)
            .order_by(col(InstanceMetric.at).desc())
            .limit(1)
        )
    ).first()
    provider = await session.get(Provider, instance.provider_id)
    itype = await session.get(InstanceType, instance.instance_type_id)
    summary = summarize(instance, actions)
    agent_status: AgentStatus = (
        "unknown"
        if instance.agent_integrity_ok is None
        else "ok"
        if instance.agent_integrity_ok
        else "mismatch"
    )
    return InstanceDetail(
        **summary.model_dump(),
        provider=provider.name if provider else "?",
        instance_type=itype.name if itype else "?",
        price_per_hour=itype.price_per_hour if itype else 0.0,
        currency=itype.currency if itype else "EUR",
        zone=instance.zone,
        engine_url=instance.engine_url,
        agent_url=instance.agent_url,
        agent_checksum=instance.agent_checksum,
        agent_status=agent_status,
        expected_agent_version=settings.expected_agent_version or bundled_agent().version,
        last_heartbeat_at=instance.last_heartbeat_at,
        latest_metrics=MetricSample(**latest.model_dump()) if latest else None,
        history=[StateChange(**h.model_dump()) for h in history],
        actions=[action_public(a) for a in actions],
        volumes=[VolumePublic(**v.model_dump()) for v in volumes],
        temporal_url=(
            f"{settings.temporal_ui}/namespaces/{settings.temporal_namespace}"
            f"/workflows/{instance.workflow_id}"
        ),
    )


async def command_workflow(
    command: Callable[[Client, str], Awaitable[None]], temporal: Client, instance: Instance
) -> None:
    """Send the command to the instance's workflow, which decides: 409 when it refuses or is not
    running (nothing would act on it), 503 when the orchestrator does not answer."""
    try:
        await command(temporal, instance.workflow_id)
    except CommandRefusedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except WorkflowNotRunningError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{exc}; the reconciler will settle its state"
        ) from None
    except OrchestratorUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


class ActionAccepted(BaseModel):
    id: uuid.UUID
    state: InstanceState
    action: str


@router.post("/{instance_id}/drain", response_model=ActionAccepted, status_code=202)
async def drain_instance(
    instance_id: uuid.UUID, session: SessionDep, user: CurrentUser, temporal: TemporalDep
) -> ActionAccepted:
    """Stop routing new requests to it, let in-flight ones finish, then terminate."""
    instance = await get_visible_instance(session, user, instance_id)
    await command_workflow(orchestration.drain_instance, temporal, instance)
    return ActionAccepted(id=instance.id, state=instance.state, action="drain")


@router.delete("/{instance_id}", response_model=ActionAccepted, status_code=202)
async def terminate_instance(
    instance_id: uuid.UUID, session: SessionDep, user: CurrentUser, temporal: TemporalDep
) -> ActionAccepted:
    """Drain (if serving) and terminate: server, then volumes; persistent volumes are kept."""
    instance = await get_visible_instance(session, user, instance_id)
    await command_workflow(orchestration.terminate_instance, temporal, instance)
    return ActionAccepted(id=instance.id, state=instance.state, action="terminate")
