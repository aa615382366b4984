"""Deployments: list, and provision a new instance of one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel
from sqlmodel import col, select

from activities.launch import create_instance
from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, SessionDep, SettingsDep, TemporalDep
from api.routers.instances import InstanceSummary, summarize
from core.models import Deployment, Provider

router = APIRouter(prefix="/deployments", tags=["deployments"])


class DeploymentPublic(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    model: str
    served_name: str
    flavor: str
    provider: str
    instance_type_id: uuid.UUID
    min_instances: int
    max_instances: int
    autoscaling_enabled: bool
    autoscaling: dict[str, Any]
    engine_args: dict[str, Any]
    boot_timeout_s: float | None
    created_at: datetime


def to_public(d: Deployment, provider_name: str) -> DeploymentPublic:
    return DeploymentPublic(
        **d.model_dump(exclude={"provider_id", "updated_at"}), provider=provider_name
    )


async def get_visible_deployment(
    session: SessionDep, user: CurrentUser, deployment_id: uuid.UUID
) -> Deployment:
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"deployment {deployment_id} not found")
    await require_project(session, user, deployment.project_id)
    return deployment


@router.get("", response_model=list[DeploymentPublic])
async def list_deployments(session: SessionDep, user: CurrentUser) -> list[DeploymentPublic]:
    query = select(Deployment, Provider.name).join(Provider).order_by(col(Deployment.created_at))
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(col(Deployment.project_id).in_(visible))
    return [to_public(d, name) for d, name in (await session.exec(query)).all()]


@router.post(
    "/{deployment_id}/instances",
    response_model=InstanceSummary,
    status_code=status.HTTP_202_ACCEPTED,
)
async def provision_instance(
    deployment_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> InstanceSummary:
    """Start a new instance of the deployment; returns at once, follow it at /instances/{id}."""
    deployment = await get_visible_deployment(session, user, deployment_id)
    instance = await create_instance(session, temporal, settings.task_queue, deployment=deployment)
    return summarize(instance, [])
