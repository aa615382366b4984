"""Project quotas: admins set them, members see them with the project's use against them.
Enforced where instances are created (core/quotas.py) and where keys get their limits."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import update
from sqlmodel import col, select

from api.deps import CurrentAdmin, CurrentUser, RedisDep, SessionDep
from api.errors import ADMIN_ERRORS
from api.reports import CurrencyAmount
from api.routers.projects import get_visible_project
from api.validation import PositiveLimit
from core.models import ApiKey, ProjectQuota, utcnow
from core.quotas import quota_use
from core.redis_keys import API_KEY_CHANNEL

router = APIRouter(prefix="/projects", tags=["quotas"], responses=ADMIN_ERRORS)


class QuotaLimits(BaseModel):
    """Null means unlimited."""

    allowed_provider_ids: list[uuid.UUID] | None = Field(
        default=None, description="providers the project may use; null: any"
    )
    allowed_instance_type_ids: list[uuid.UUID] | None = Field(
        default=None, description="instance types the project may use; null: any"
    )
    max_instances: int | None = Field(default=None, ge=0, le=100_000)
    max_gpus: int | None = Field(default=None, ge=0, le=1_000_000)
    monthly_budget: float | None = Field(
        default=None, ge=0, le=1e12, description="compute and volume cost per calendar month"
    )
    budget_currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    monthly_gpu_hours: float | None = Field(default=None, ge=0, le=1e9)
    budget_warning_percent: int = Field(
        default=80, ge=1, le=100, description="use at which the budget shows a warning"
    )
    max_key_rpm: PositiveLimit | None = Field(
        default=None, description="ceiling of a key's requests per minute"
    )
    max_key_tpm: PositiveLimit | None = Field(
        default=None, description="ceiling of a key's tokens per minute"
    )


class QuotaUsePublic(BaseModel):
    instances: int
    gpus: int
    month_cost: list[CurrencyAmount]
    month_gpu_hours: float
    budget_used_percent: float | None = Field(
        description="the larger of cost and GPU-hours against their monthly limits"
    )
    warning: bool = Field(description="at or past the warning threshold")
    stopped: bool = Field(description="budget spent: no new instances this month")


class QuotaPublic(BaseModel):
    project_id: uuid.UUID
    limits: QuotaLimits
    use: QuotaUsePublic
    updated_at: datetime | None


async def _public(session: SessionDep, project_id: uuid.UUID) -> QuotaPublic:
    quota = await session.get(ProjectQuota, project_id)
    use = await quota_use(session, quota, project_id)
    limits = QuotaLimits.model_validate(quota.model_dump()) if quota else QuotaLimits()
    return QuotaPublic(
        project_id=project_id,
        limits=limits,
        use=QuotaUsePublic(
            instances=use.instances,
            gpus=use.gpus,
            month_cost=[CurrencyAmount(currency=c, amount=a) for c, a in use.month_cost.items()],
            month_gpu_hours=use.month_gpu_hours,
            budget_used_percent=use.budget_used_percent,
            warning=use.warning,
            stopped=use.stopped,
        ),
        updated_at=quota.updated_at if quota else None,
    )


@router.get("/{project_id}/quota", response_model=QuotaPublic)
async def get_quota(project_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> QuotaPublic:
    """The project's limits and what it uses now (this month's cost and GPU-hours)."""
    await get_visible_project(session, user, project_id)
    return await _public(session, project_id)


@router.put("/{project_id}/quota", response_model=QuotaPublic)
async def set_quota(
    project_id: uuid.UUID,
    body: QuotaLimits,
    session: SessionDep,
    redis: RedisDep,
    admin: CurrentAdmin,
) -> QuotaPublic:
    """Set the project's limits (all of them: a field left out is unlimited). Keys above a new
    key-limit ceiling are brought down to it at once, on every gateway."""
    await get_visible_project(session, admin, project_id)
    values = body.model_dump(mode="json")
    quota = await session.get(ProjectQuota, project_id)
    if quota is None:
        quota = ProjectQuota(project_id=project_id)
    for field, value in values.items():
        setattr(quota, field, value)
    quota.updated_at = utcnow()
    session.add(quota)
    lowered: list[str] = []
    for name, ceiling in (("rpm_limit", body.max_key_rpm), ("tpm_limit", body.max_key_tpm)):
        if ceiling is None:
            continue
        limit = col(getattr(ApiKey, name))
        where = (
            col(ApiKey.project_id) == project_id,
            col(ApiKey.revoked_at).is_(None),
            limit.is_(None) | (limit > ceiling),
        )
        lowered += (await session.exec(select(ApiKey.key_hash).where(*where))).all()
        await session.exec(update(ApiKey).where(*where).values({name: ceiling}))
    await session.commit()
    for key_hash in set(lowered):
        await redis.publish(API_KEY_CHANNEL, key_hash)  # gateways reload those keys' limits
    return await _public(session, project_id)
