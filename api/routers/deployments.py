"""Deployments: a model served on a provider's instance type, min/max instances, autoscaling
and engine arguments. Create, update, delete (kept on record for costs), provision an instance,
start/stop autoscaling."""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AfterValidator, BaseModel, Field, model_validator
from sqlmodel import col, func, select

from activities.providers.base import InvalidRequestError
from activities.providers.flavors import FLAVORS, Flavor
from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, RedisDep, SessionDep, SettingsDep, TemporalDep
from api.errors import ERRORS
from api.governance import check_may_change, deployment_problems
from api.routers.events import EventPublic, recent_events
from api.routers.instances import InstanceSummary, summarize
from api.validation import JsonObject, Name, PartialUpdate
from core.autoscaling import AutoscalingConfig
from core.events import EventKind, publish_event
from core.models import (
    Deployment,
    Instance,
    InstanceType,
    Provider,
    ScalingAction,
    ScalingDecision,
    utcnow,
)
from core.states import LIVE_STATES
from core.wire import RoutingStrategy
from workflows.client import create_instance, ensure_autoscaler, wake_autoscaler

router = APIRouter(prefix="/deployments", tags=["deployments"], responses=ERRORS)

MAX_INSTANCES = 1000
_ENGINE_FLAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODEL = r"^[^\s\x00]+$"


def _engine_args(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if not _ENGINE_FLAG.match(key):
            raise ValueError(
                f"engine argument {key!r} is not a flag name (letters, digits, '-', '_', '.'; "
                "without leading dashes)"
            )
        if isinstance(item, dict):
            raise ValueError(f"engine argument {key!r}: a value is a string, number, bool or list")
    return value


EngineArgs = Annotated[JsonObject, AfterValidator(_engine_args)]
ModelName = Annotated[str, Field(min_length=1, max_length=255, pattern=_MODEL)]


class _RoutingField(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _session_affinity_is_gone(cls, data: Any) -> Any:
        # Replaced by `routing` (migration 0004): refuse it rather than silently ignore it.
        if isinstance(data, dict) and "session_affinity" in data:
            raise ValueError(
                "session_affinity was replaced by routing: 'none' is now 'least_load', "
                "'header' 'sticky_header', 'user' 'sticky_user'"
            )
        return data


class DeploymentBase(_RoutingField):
    name: Name
    model: ModelName = Field(description="model to load, e.g. a Hugging Face id")
    served_name: ModelName | None = Field(
        default=None, description="name clients ask the gateway for; the model when unset"
    )
    flavor: str = Field(
        default="cpu-sim", max_length=64, description="see GET /deployments/flavors"
    )
    provider_id: uuid.UUID
    instance_type_id: uuid.UUID
    min_instances: int = Field(default=0, ge=0, le=MAX_INSTANCES)
    max_instances: int = Field(default=1, ge=0, le=MAX_INSTANCES)
    autoscaling_enabled: bool = False
    autoscaling: AutoscalingConfig = Field(
        default_factory=AutoscalingConfig, description="autoscaling policy (core/autoscaling.py)"
    )
    engine_args: EngineArgs = Field(
        default_factory=dict,
        description='engine flags without dashes, e.g. {"max-model-len": 8192}',
    )
    boot_timeout_s: float | None = Field(default=None, gt=0, le=86400)
    routing: RoutingStrategy = Field(
        default=RoutingStrategy.sticky_header,
        description="how the gateway picks an instance: least_load, or sticky by session "
        "(sticky_header: the session header; sticky_user: the request's user field)",
    )
    trusted: bool = Field(
        default=False, description="admins only: may use code-loading and network engine flags"
    )


class DeploymentCreate(DeploymentBase):
    project_id: uuid.UUID


class DeploymentUpdate(PartialUpdate, _RoutingField):
    """Fields left out are unchanged. Changes apply to instances started afterwards."""

    name: Name | None = None
    model: ModelName | None = None
    served_name: ModelName | None = None
    flavor: str | None = Field(default=None, max_length=64)
    provider_id: uuid.UUID | None = None
    instance_type_id: uuid.UUID | None = None
    min_instances: int | None = Field(default=None, ge=0, le=MAX_INSTANCES)
    max_instances: int | None = Field(default=None, ge=0, le=MAX_INSTANCES)
    autoscaling: AutoscalingConfig | None = None
    engine_args: EngineArgs | None = None
    boot_timeout_s: float | None = Field(default=None, gt=0, le=86400)
    routing: RoutingStrategy | None = None
    trusted: bool | None = None

    nullable = frozenset({"boot_timeout_s"})


class DeploymentPublic(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    model: str
    served_name: str
    flavor: str
    provider: str
    provider_id: uuid.UUID
    instance_type_id: uuid.UUID
    min_instances: int
    max_instances: int
    autoscaling_enabled: bool
    autoscaling: dict[str, Any]
    engine_args: dict[str, Any]
    boot_timeout_s: float | None
    routing: RoutingStrategy
    trusted: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    live_instances: int = Field(description="instances that may be running at the provider")
    effective_engine_args: dict[str, Any] = Field(
        description="the engine flags a machine gets: with the max-model-len the platform chose "
        "when the model's native context does not fit the instance type's GPUs"
    )


class InstanceTypeChoice(BaseModel):
    """An instance type a deployment can run on (the catalogue as members see it)."""

    id: uuid.UUID
    name: str
    provider_id: uuid.UUID
    provider: str
    provider_kind: str
    gpu_model: str | None
    gpu_count: int
    gpu_memory_gb: float
    vcpus: int
    ram_gb: float
    price_per_hour: float
    currency: str


class FlavorPublic(BaseModel):
    name: str
    description: str
    accelerator: str
    gpu_models: list[str]
    engine_args: dict[str, Any]


def _engine_args_on(flavor: Flavor, d: Deployment, itype: InstanceType) -> dict[str, Any]:
    flags = {k: v for k, v in d.engine_args.items() if k != "volumes"}
    return flavor.engine_args_for(
        d.model, flags, gpu_memory_gb=itype.gpu_memory_gb, gpu_count=max(itype.gpu_count, 1)
    )


async def to_public(session: SessionDep, d: Deployment) -> DeploymentPublic:
    provider = await session.get(Provider, d.provider_id)
    itype = await session.get(InstanceType, d.instance_type_id)
    flavor = FLAVORS.get(d.flavor)
    effective: dict[str, Any] = {k: v for k, v in d.engine_args.items() if k != "volumes"}
    if flavor is not None and itype is not None:
        with contextlib.suppress(InvalidRequestError):  # saved before the check: shown as is
            effective = _engine_args_on(flavor, d, itype)
    live = await _live_instances(session, d.id)
    return DeploymentPublic(
        **d.model_dump(),
        provider=provider.name if provider else "?",
        live_instances=live,
        effective_engine_args=effective,
    )


async def _live_instances(session: SessionDep, deployment_id: uuid.UUID) -> int:
    query = (
        select(func.count())
        .select_from(Instance)
        .where(Instance.deployment_id == deployment_id, col(Instance.state).in_(LIVE_STATES))
    )
    return (await session.exec(query)).one()


async def get_visible_deployment(
    session: SessionDep, user: CurrentUser, deployment_id: uuid.UUID
) -> Deployment:
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"deployment {deployment_id} not found")
    await require_project(session, user, deployment.project_id)
    return deployment


def _active(deployment: Deployment) -> Deployment:
    if deployment.deleted_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the deployment is deleted")
    return deployment


async def validate(session: SessionDep, d: Deployment) -> None:
    """Checks that span rows: raise 422/409 with the reason."""
    problems: list[str] = []
    if d.min_instances > d.max_instances:
        problems.append(
            f"min_instances ({d.min_instances}) is above max_instances ({d.max_instances})"
        )
    flavor = FLAVORS.get(d.flavor.lower())
    if flavor is None:
        problems.append(f"unknown flavor {d.flavor!r}; known: {', '.join(sorted(FLAVORS))}")
    provider = await session.get(Provider, d.provider_id)
    itype = await session.get(InstanceType, d.instance_type_id)
    if provider is None:
        problems.append(f"provider {d.provider_id} not found")
    elif not provider.enabled:
        problems.append(f"provider {provider.name!r} is disabled")
    if itype is None:
        problems.append(f"instance type {d.instance_type_id} not found")
    elif provider is not None and itype.provider_id != provider.id:
        problems.append(
            f"instance type {itype.name!r} does not belong to provider {provider.name!r}"
        )
    elif flavor is not None and flavor.gpu_models and itype.gpu_model not in flavor.gpu_models:
        problems.append(
            f"flavor {flavor.name!r} needs one of {', '.join(flavor.gpu_models)} GPUs; "
            f"{itype.name} has {itype.gpu_model or 'no GPU'}"
        )
    problems += deployment_problems(d)
    if problems:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "; ".join(problems))
    if flavor is not None and itype is not None:
        try:  # vLLM exits when the context cannot fit: refused before anything is provisioned
            _engine_args_on(flavor, d, itype)
        except InvalidRequestError as exc:  # shaped as a validation error, naming the field
            too_long = "max-model-len" in str(exc)  # else the weights alone do not fit
            loc = ["body", "engine_args", "max-model-len"] if too_long else ["body", "model"]
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [{"loc": loc, "msg": str(exc), "type": "value_error"}],
            ) from None
    clash = (
        await session.exec(
            select(Deployment.id).where(
                Deployment.project_id == d.project_id,
                Deployment.served_name == d.served_name,
                col(Deployment.deleted_at).is_(None),
                Deployment.id != d.id,
            )
        )
    ).first()
    # A clear message for the common case; a concurrent create that passes this read is refused
    # by the unique index (409 through the integrity-error handler).
    if clash is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"served name {d.served_name!r} is already used by another deployment of this project",
        )


async def _sync_autoscaler(temporal: TemporalDep, settings: SettingsDep, d: Deployment) -> None:
    """Autoscaling on: its workflow runs from now (it ends by itself when turned off)."""
    if d.autoscaling_enabled and d.deleted_at is None:
        await ensure_autoscaler(temporal, settings.task_queue, d.id, settings.autoscale_interval_s)


async def _changed(redis: RedisDep, d: Deployment, what: str) -> None:
    await publish_event(
        redis, EventKind.deployment, str(d.project_id), {"deployment_id": str(d.id), "change": what}
    )


@router.get("", response_model=list[DeploymentPublic])
async def list_deployments(
    session: SessionDep,
    user: CurrentUser,
    project_id: uuid.UUID | None = None,
    include_deleted: bool = False,
) -> list[DeploymentPublic]:
    query = select(Deployment).order_by(col(Deployment.created_at))
    if project_id is not None:
        await require_project(session, user, project_id)
        query = query.where(Deployment.project_id == project_id)
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(col(Deployment.project_id).in_(visible))
    if not include_deleted:
        query = query.where(col(Deployment.deleted_at).is_(None))
    return [await to_public(session, d) for d in (await session.exec(query)).all()]


@router.get("/flavors", response_model=list[FlavorPublic])
async def list_flavors(user: CurrentUser) -> list[FlavorPublic]:
    """Worker flavors a deployment can use (engine image and defaults)."""
    return [
        FlavorPublic(
            name=f.name,
            description=f.description,
            accelerator=f.accelerator,
            gpu_models=list(f.gpu_models),
            engine_args=dict(f.engine_args),
        )
        for f in FLAVORS.values()
    ]


@router.get("/instance-types", response_model=list[InstanceTypeChoice])
async def list_instance_type_choices(
    session: SessionDep, user: CurrentUser
) -> list[InstanceTypeChoice]:
    """Instance types of the enabled providers, with their prices: what a deployment may use."""
    rows = await session.exec(
        select(InstanceType, Provider)
        .join(Provider, col(Provider.id) == InstanceType.provider_id)
        .where(col(Provider.enabled))
        .order_by(col(Provider.name), col(InstanceType.price_per_hour), col(InstanceType.name))
    )
    return [
        InstanceTypeChoice(**t.model_dump(exclude={"zones"}), provider=p.name, provider_kind=p.kind)
        for t, p in rows.all()
    ]


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_201_CREATED)
async def create_deployment(
    body: DeploymentCreate,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> DeploymentPublic:
    await require_project(session, user, body.project_id)
    values = body.model_dump()
    check_may_change(user, False, values)
    values["served_name"] = body.served_name or body.model
    values["flavor"] = body.flavor.lower()
    deployment = Deployment(**values)
    await validate(session, deployment)
    session.add(deployment)
    await session.commit()
    await _changed(redis, deployment, "created")
    await _sync_autoscaler(temporal, settings, deployment)
    return await to_public(session, deployment)


@router.get("/{deployment_id}", response_model=DeploymentPublic)
async def get_deployment(
    deployment_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> DeploymentPublic:
    return await to_public(session, await get_visible_deployment(session, user, deployment_id))


@router.patch("/{deployment_id}", response_model=DeploymentPublic)
async def update_deployment(
    deployment_id: uuid.UUID,
    body: DeploymentUpdate,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> DeploymentPublic:
    deployment = _active(await get_visible_deployment(session, user, deployment_id))
    changes = body.model_dump(exclude_unset=True)
    check_may_change(user, deployment.trusted, changes)
    if "flavor" in changes:
        changes["flavor"] = changes["flavor"].lower()
    for field, value in changes.items():
        setattr(deployment, field, value)
    await validate(session, deployment)
    deployment.updated_at = utcnow()
    session.add(deployment)
    await session.commit()
    await _changed(redis, deployment, "updated")
    await _sync_autoscaler(temporal, settings, deployment)
    return await to_public(session, deployment)


@router.delete("/{deployment_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_deployment(
    deployment_id: uuid.UUID, session: SessionDep, redis: RedisDep, user: CurrentUser
) -> None:
    """Retire the deployment (kept on record for its history and costs; its served name becomes
    free). Refused while it has live instances: terminate them first."""
    deployment = _active(await get_visible_deployment(session, user, deployment_id))
    live = await _live_instances(session, deployment.id)
    if live:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the deployment has {live} live instance(s): terminate them first",
        )
    deployment.deleted_at = utcnow()
    deployment.autoscaling_enabled = False
    deployment.updated_at = deployment.deleted_at
    session.add(deployment)
    await session.commit()
    await _changed(redis, deployment, "deleted")


async def _set_autoscaling(
    session: SessionDep, redis: RedisDep, user: CurrentUser, deployment_id: uuid.UUID, on: bool
) -> Deployment:
    deployment = _active(await get_visible_deployment(session, user, deployment_id))
    deployment.autoscaling_enabled = on
    deployment.updated_at = utcnow()
    session.add(deployment)
    await session.commit()
    await _changed(redis, deployment, "autoscaling started" if on else "autoscaling stopped")
    return deployment


@router.post("/{deployment_id}/autoscaling/start", response_model=DeploymentPublic)
async def start_autoscaling(
    deployment_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> DeploymentPublic:
    """Let the autoscaler add and drain instances between min and max."""
    deployment = await _set_autoscaling(session, redis, user, deployment_id, True)
    await _sync_autoscaler(temporal, settings, deployment)
    return await to_public(session, deployment)


@router.post("/{deployment_id}/autoscaling/stop", response_model=DeploymentPublic)
async def stop_autoscaling(
    deployment_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    temporal: TemporalDep,
) -> DeploymentPublic:
    """Freeze the instance count: the autoscaler leaves the deployment alone (woken, its
    workflow sees autoscaling off and ends now rather than at its next tick)."""
    deployment = await _set_autoscaling(session, redis, user, deployment_id, False)
    await wake_autoscaler(temporal, str(deployment.id))
    return await to_public(session, deployment)


@router.get("/{deployment_id}/events", response_model=list[EventPublic])
async def list_deployment_events(
    deployment_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    limit: int = Query(default=50, ge=1, le=500),
) -> list[EventPublic]:
    """Recent events about the deployment, newest first: configuration changes, autoscaling
    switched on or off, scaling decisions (from the live event stream's recent history)."""
    deployment = await get_visible_deployment(session, user, deployment_id)
    wanted = str(deployment.id)
    return await recent_events(
        redis, lambda event: event["data"].get("deployment_id") == wanted, limit
    )


class ScalingDecisionPublic(BaseModel):
    """One round of the deployment's autoscaler."""

    id: uuid.UUID
    at: datetime
    delta: int = Field(description="> 0 servers ordered, < 0 instances to drain, 0 nothing")
    action: ScalingAction
    reason: str
    instances: int = Field(description="booting + ready instances when it decided")
    inputs: dict[str, Any] = Field(
        description="what it read: queue_wait_avg_s, active_requests, queued_requests, "
        "arrival_rate_rps, completion_rate_rps, ttft_p95_s, window_s, ready, booting, gpus, "
        "running, gpu_utilization (0..1)"
    )
    drain: list[str] = Field(description="instances chosen to drain")
    result: dict[str, Any] | None = Field(
        description="what acting on it did (started, drained, refused, held_back_by_quota); "
        "null while not acted on or for nothing to do"
    )


@router.get("/{deployment_id}/decisions", response_model=list[ScalingDecisionPublic])
async def list_scaling_decisions(
    deployment_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    since: datetime | None = Query(default=None, description="only decisions after this time"),
    changes_only: bool = Query(default=False, description="only decisions that scaled"),
    limit: int = Query(default=200, ge=1, le=2000),
) -> list[ScalingDecisionPublic]:
    """The autoscaler's decisions, newest first: time, inputs, result, reason and action."""
    deployment = await get_visible_deployment(session, user, deployment_id)
    query = select(ScalingDecision).where(ScalingDecision.deployment_id == deployment.id)
    if since is not None:
        query = query.where(col(ScalingDecision.at) > since)
    if changes_only:
        query = query.where(col(ScalingDecision.action) != ScalingAction.none)
    rows = await session.exec(query.order_by(col(ScalingDecision.at).desc()).limit(limit))
    return [ScalingDecisionPublic.model_validate(r, from_attributes=True) for r in rows.all()]


@router.post(
    "/{deployment_id}/instances",
    response_model=InstanceSummary,
    status_code=status.HTTP_202_ACCEPTED,
)
async def provision_instance(
    deployment_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    user: CurrentUser,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> InstanceSummary:
    """Start a new instance of the deployment; returns at once, follow it at /instances/{id}."""
    deployment = _active(await get_visible_deployment(session, user, deployment_id))
    live = await _live_instances(session, deployment.id)
    if live >= deployment.max_instances:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the deployment already has {live} live instance(s) and max_instances is "
            f"{deployment.max_instances}: raise max_instances first",
        )
    instance = await create_instance(session, temporal, settings.task_queue, deployment=deployment)
    await publish_event(
        redis,
        EventKind.instance,
        str(instance.project_id),
        {"instance_id": str(instance.id), "state": instance.state.value, "change": "created"},
    )
    return summarize(instance, [])
