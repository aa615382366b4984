"""Project quotas, enforced where instances are created: the API's provision, the autoscaler's
scale-up and the replacement of an unhealthy instance all call `check_and_reserve` in the
transaction that inserts the instance row.

It locks the project row (SELECT ... FOR UPDATE) until that transaction ends, so two creations
for one project are serialised: the second sees the first's row and cannot also take the last
free slot. A project without a `project_quotas` row (or a null limit) is unlimited.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.billing import spend
from core.models import Deployment, Instance, InstanceType, Project, ProjectQuota, utcnow
from core.states import LIVE_STATES


class QuotaExceeded(Exception):
    """The instance may not be created; `status_code` 403 (not allowed) or 409 (no room now)."""

    def __init__(self, reason: str, status_code: int = 409) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(now: datetime) -> datetime:
    return (month_start(now) + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class QuotaUse:
    """What the project uses now against its quota."""

    instances: int
    gpus: int
    month_cost: dict[str, float]
    month_gpu_hours: float
    budget_used_percent: float | None  # the larger of cost and GPU-hours, against their limits
    warning: bool  # at or past the warning threshold
    stopped: bool  # budget spent: no new instances


async def _live(
    session: AsyncSession, project_id: uuid.UUID, excluding: uuid.UUID | None
) -> tuple[int, int]:
    """(live instances, their GPUs) of the project."""
    query = (
        select(func.count(), func.coalesce(func.sum(InstanceType.gpu_count), 0))
        .select_from(Instance)
        .join(InstanceType, col(InstanceType.id) == Instance.instance_type_id)
        .where(Instance.project_id == project_id, col(Instance.state).in_(LIVE_STATES))
    )
    if excluding is not None:
        query = query.where(Instance.id != excluding)
    count, gpus = (await session.exec(query)).one()
    return int(count), int(gpus)


async def quota_use(
    session: AsyncSession, quota: ProjectQuota | None, project_id: uuid.UUID
) -> QuotaUse:
    now = utcnow()
    instances, gpus = await _live(session, project_id, None)
    month = await spend(session, project_id, month_start(now), now)
    shares = []
    if quota is not None and quota.monthly_budget is not None:
        amount = month.cost.get(quota.budget_currency, 0.0)
        shares.append(100.0 * amount / quota.monthly_budget if quota.monthly_budget else 100.0)
    if quota is not None and quota.monthly_gpu_hours is not None:
        hours = month.gpu_hours
        shares.append(100.0 * hours / quota.monthly_gpu_hours if quota.monthly_gpu_hours else 100.0)
    used = max(shares) if shares else None
    return QuotaUse(
        instances=instances,
        gpus=gpus,
        month_cost={c: round(a, 6) for c, a in month.cost.items()},
        month_gpu_hours=round(month.gpu_hours, 6),
        budget_used_percent=None if used is None else round(used, 3),
        warning=used is not None and quota is not None and used >= quota.budget_warning_percent,
        stopped=used is not None and used >= 100.0,
    )


async def check_and_reserve(
    session: AsyncSession, deployment: Deployment, *, replacing: uuid.UUID | None = None
) -> None:
    """Lock the project row and check that one more instance of the deployment fits: its
    `max_instances`, and the project's allowed providers and types, instances and GPUs at once,
    and monthly budget. `replacing`: an instance on its way out that the new one replaces (not
    counted). Raises QuotaExceeded; the caller inserts the row in the same transaction."""
    await session.exec(
        select(Project.id).where(Project.id == deployment.project_id).with_for_update()
    )
    live_query = (
        select(func.count())
        .select_from(Instance)
        .where(Instance.deployment_id == deployment.id, col(Instance.state).in_(LIVE_STATES))
    )
    if replacing is not None:
        live_query = live_query.where(Instance.id != replacing)
    live = int((await session.exec(live_query)).one())
    if live >= deployment.max_instances:
        raise QuotaExceeded(
            f"the deployment already has {live} live instance(s) and max_instances is "
            f"{deployment.max_instances}"
        )
    quota = await session.get(ProjectQuota, deployment.project_id)
    if quota is None:
        return
    itype = await session.get(InstanceType, deployment.instance_type_id)
    assert itype is not None
    if quota.allowed_provider_ids is not None and str(deployment.provider_id) not in (
        quota.allowed_provider_ids
    ):
        raise QuotaExceeded("the project's quota does not allow this provider", 403)
    if quota.allowed_instance_type_ids is not None and str(itype.id) not in (
        quota.allowed_instance_type_ids
    ):
        raise QuotaExceeded(f"the project's quota does not allow instance type {itype.name}", 403)
    if quota.monthly_budget is not None and itype.currency != quota.budget_currency:
        raise QuotaExceeded(
            f"{itype.name} is priced in {itype.currency}, the project's budget in "
            f"{quota.budget_currency}",
            403,
        )
    instances, gpus = await _live(session, deployment.project_id, replacing)
    if quota.max_instances is not None and instances + 1 > quota.max_instances:
        raise QuotaExceeded(
            f"the project's quota allows {quota.max_instances} instance(s) at once and "
            f"{instances} are live"
        )
    if quota.max_gpus is not None and gpus + itype.gpu_count > quota.max_gpus:
        raise QuotaExceeded(
            f"the project's quota allows {quota.max_gpus} GPU(s) at once: {gpus} in use, "
            f"{itype.name} has {itype.gpu_count}"
        )
    use = await quota_use(session, quota, deployment.project_id)
    if use.stopped:
        raise QuotaExceeded(
            f"the project's monthly budget is spent ({use.budget_used_percent:.0f} %): no new "
            f"instances until {next_month(utcnow()):%Y-%m-%d} or a larger budget"
        )


def key_limits_within_ceiling(
    quota: ProjectQuota | None, rpm: int | None, tpm: int | None
) -> tuple[int | None, int | None]:
    """A key's limits under the project's ceiling: an unset limit becomes the ceiling; one above
    it raises QuotaExceeded (403)."""
    if quota is None:
        return rpm, tpm
    limits = []
    for name, value, ceiling in (
        ("rpm_limit", rpm, quota.max_key_rpm),
        ("tpm_limit", tpm, quota.max_key_tpm),
    ):
        if ceiling is not None and value is not None and value > ceiling:
            raise QuotaExceeded(f"{name} {value} is above the project's ceiling of {ceiling}", 403)
        limits.append(ceiling if value is None else value)
    return limits[0], limits[1]
