"""What an instance and a volume cost over a time window: one definition for cost reports,
monthly statements and budget quotas.

An instance is billed from the moment its machine was asked of the provider (the start of its
`provider_create` step) until it was terminated (or now, while it may still run), at its
instance type's hourly price; a row that never reached a provider costs nothing. A volume is billed from its creation until it was
deleted (or now: kept volumes outlive their instance and go on costing), at its provider's price
per GB-month (`HOURS_PER_MONTH` hours).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import (
    Instance,
    InstanceAction,
    InstanceType,
    InstanceVolume,
    Provider,
    utcnow,
)
from core.progress import Step
from core.states import LIVE_STATES

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class InstanceSpan:
    instance_id: uuid.UUID
    project_id: uuid.UUID
    deployment_id: uuid.UUID
    price_per_hour: float
    currency: str
    gpu_count: int
    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


@dataclass(frozen=True)
class VolumeSpan:
    provider_volume_id: str
    instance_id: uuid.UUID
    project_id: uuid.UUID
    deployment_id: uuid.UUID
    size_gb: float
    state: str
    price_per_gb_month: float
    currency: str
    start: datetime
    end: datetime

    def cost(self, start: datetime, end: datetime) -> float:
        hours = (min(end, self.end) - max(start, self.start)).total_seconds() / 3600
        return max(hours, 0) * self.size_gb * self.price_per_gb_month / HOURS_PER_MONTH


async def instance_spans(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    *,
    projects: set[uuid.UUID] | None = None,
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> list[InstanceSpan]:
    """Each instance's time at the provider within [start, end)."""
    now = utcnow()
    billed_from = (
        sa_select(func.min(col(InstanceAction.started_at)))
        .where(
            col(InstanceAction.instance_id) == Instance.id,
            col(InstanceAction.step) == Step.provider_create,
        )
        .correlate(Instance)
        .scalar_subquery()
    )
    ended = func.coalesce(
        col(Instance.terminated_at),
        case((col(Instance.state).in_(LIVE_STATES), now), else_=col(Instance.updated_at)),
    )
    query = (
        sa_select(
            Instance,
            col(InstanceType.price_per_hour),
            col(InstanceType.currency),
            col(InstanceType.gpu_count),
            ended.label("ended"),
            billed_from.label("billed_from"),
        )
        .join(InstanceType, col(InstanceType.id) == Instance.instance_type_id)
        .where(billed_from < end, ended > start)
    )
    if projects is not None:
        query = query.where(col(Instance.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(Instance.project_id) == project_id)
    if deployment_id is not None:
        query = query.where(col(Instance.deployment_id) == deployment_id)
    spans = []
    for instance, price, currency, gpus, stopped, began in (await session.execute(query)).all():
        lo, hi = max(began, start), min(stopped, end)
        if hi > lo:
            spans.append(
                InstanceSpan(
                    instance.id,
                    instance.project_id,
                    instance.deployment_id,
                    price,
                    currency,
                    gpus,
                    lo,
                    hi,
                )
            )
    return spans


async def volume_spans(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    *,
    projects: set[uuid.UUID] | None = None,
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> list[VolumeSpan]:
    """Each volume's life within [start, end), with its provider's price."""
    stopped = func.coalesce(col(InstanceVolume.deleted_at), utcnow())
    query = (
        sa_select(
            InstanceVolume,
            Instance,
            col(Provider.volume_price_per_gb_month),
            col(Provider.volume_currency),
            stopped.label("stopped"),
        )
        .join(Instance, col(Instance.id) == InstanceVolume.instance_id)
        .join(Provider, col(Provider.id) == Instance.provider_id)
        .where(col(InstanceVolume.created_at) < end, stopped > start)
    )
    if projects is not None:
        query = query.where(col(Instance.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(Instance.project_id) == project_id)
    if deployment_id is not None:
        query = query.where(col(Instance.deployment_id) == deployment_id)
    spans = []
    for volume, instance, price, currency, until in (await session.execute(query)).all():
        lo, hi = max(volume.created_at, start), min(until, end)
        if hi > lo:
            spans.append(
                VolumeSpan(
                    volume.provider_volume_id,
                    instance.id,
                    instance.project_id,
                    instance.deployment_id,
                    volume.size_gb,
                    volume.state,
                    price,
                    currency,
                    lo,
                    hi,
                )
            )
    return spans


@dataclass(frozen=True)
class Spend:
    cost: dict[str, float]  # currency -> amount
    gpu_hours: float


async def spend(
    session: AsyncSession, project_id: uuid.UUID, start: datetime, end: datetime
) -> Spend:
    """What the project's instances and volumes cost within [start, end), and its GPU-hours."""
    cost: dict[str, float] = {}
    gpu_hours = 0.0
    for s in await instance_spans(session, start, end, project_id=project_id):
        cost[s.currency] = cost.get(s.currency, 0.0) + s.hours * s.price_per_hour
        gpu_hours += s.hours * s.gpu_count
    for v in await volume_spans(session, start, end, project_id=project_id):
        cost[v.currency] = cost.get(v.currency, 0.0) + v.cost(start, end)
    return Spend(cost, gpu_hours)
