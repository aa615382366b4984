"""Usage (from request_logs) and server cost (uptime x unit price) for the usage, costs and
billing routers. Days are UTC days."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from fastapi import HTTPException, status
from pydantic import BaseModel
from sqlalchemy import Date, cast, func
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.billing import HOURS_PER_MONTH, VolumeSpan, instance_spans, volume_spans
from core.models import ApiKey, Deployment, Instance, InstanceType, RequestLog, utcnow
from core.states import LIVE_STATES

MAX_RANGE = timedelta(days=400)


class UsageDimension(StrEnum):
    day = "day"
    project = "project"
    key = "key"
    model = "model"
    deployment = "deployment"


class CostDimension(StrEnum):
    day = "day"
    project = "project"
    deployment = "deployment"
    instance = "instance"


class UsageRow(BaseModel):
    day: date | None = None
    project_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    api_key_name: str | None = None
    api_key_prefix: str | None = None
    model: str | None = None
    deployment_id: uuid.UUID | None = None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int


class CostRow(BaseModel):
    day: date | None = None
    project_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None
    deployment_name: str | None = None
    instance_id: uuid.UUID | None = None
    instance_hours: float
    cost: float
    currency: str


class StorageRow(BaseModel):
    """Volume cost: size x the provider's price per GB-month, for the time the volume existed
    (kept volumes go on costing after their instance is gone)."""

    day: date | None = None
    project_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    provider_volume_id: str | None = None
    size_gb: float | None = None
    state: str | None = None
    gb_months: float
    cost: float
    currency: str


class CurrencyAmount(BaseModel):
    currency: str
    amount: float


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def window(
    start: datetime | None, end: datetime | None, *, default: timedelta = timedelta(days=30)
) -> Window:
    """The [start, end) range asked for; without a start, the `default` span before end."""
    end = _aware(end) if end else utcnow()
    try:
        start = _aware(start) if start else end - default
    except OverflowError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "end is too early") from None
    if start >= end:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "start must be before end")
    if end - start > MAX_RANGE:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"the range is longer than {MAX_RANGE.days} days: ask for less",
        )
    return Window(start, end)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def month_window(month: str) -> Window:
    """'2026-11' -> [2026-11-01, 2026-12-01) UTC."""
    try:
        first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"month {month!r} is not like 2026-11"
        ) from None
    if first.year >= 9999:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "month is too far ahead")
    after = (first + timedelta(days=32)).replace(day=1)
    return Window(first, after)


def traffic_totals() -> list[Any]:
    """Requests, errors and tokens over `request_logs` rows: the same sums for usage and charts."""
    log = RequestLog
    return [
        func.count().label("requests"),
        func.count().filter(col(log.status_code) >= 400).label("errors"),
        func.coalesce(func.sum(log.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(log.output_tokens), 0).label("output_tokens"),
    ]


async def usage_rows(
    session: AsyncSession,
    *,
    projects: set[uuid.UUID] | None,
    span: Window,
    group_by: list[UsageDimension],
    project_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    model: str | None = None,
) -> list[UsageRow]:
    """Requests, errors and tokens grouped by the dimensions asked for."""
    log = RequestLog
    columns: dict[UsageDimension, Any] = {
        UsageDimension.day: cast(func.timezone("UTC", col(log.at)), Date).label("day"),
        UsageDimension.project: col(log.project_id).label("project_id"),
        UsageDimension.key: col(log.api_key_id).label("api_key_id"),
        UsageDimension.model: col(log.model).label("model"),
        UsageDimension.deployment: col(log.deployment_id).label("deployment_id"),
    }
    dims = [columns[d] for d in dict.fromkeys(group_by)]
    query = sa_select(*dims, *traffic_totals()).where(
        col(log.at) >= span.start, col(log.at) < span.end
    )
    if projects is not None:
        query = query.where(col(log.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(log.project_id) == project_id)
    if api_key_id is not None:
        query = query.where(col(log.api_key_id) == api_key_id)
    if deployment_id is not None:
        query = query.where(col(log.deployment_id) == deployment_id)
    if model is not None:
        query = query.where(col(log.model) == model)
    if dims:
        query = query.group_by(*dims).order_by(*dims)
    rows = [dict(r._mapping) for r in (await session.execute(query)).all()]
    key_ids = {r["api_key_id"] for r in rows if r.get("api_key_id")}
    keys: dict[uuid.UUID, ApiKey] = {}
    if key_ids:
        found = await session.exec(select(ApiKey).where(col(ApiKey.id).in_(key_ids)))
        keys = {k.id: k for k in found.all()}
    result = []
    for r in rows:
        key = keys.get(r.get("api_key_id"))  # type: ignore[arg-type]
        result.append(
            UsageRow(
                **r,
                api_key_name=key.name if key else None,
                api_key_prefix=key.prefix if key else None,
            )
        )
    return result


def _by_day(start: datetime, end: datetime) -> list[tuple[date, float]]:
    """Hours of [start, end) falling on each UTC day."""
    parts = []
    day = start.astimezone(UTC).date()
    while True:
        day_start = datetime.combine(day, time.min, UTC)
        day_end = day_start + timedelta(days=1)
        lo, hi = max(start, day_start), min(end, day_end)
        if hi > lo:
            parts.append((day, (hi - lo).total_seconds() / 3600))
        if day_end >= end:
            return parts
        day += timedelta(days=1)


async def cost_rows(
    session: AsyncSession,
    *,
    projects: set[uuid.UUID] | None,
    span: Window,
    group_by: list[CostDimension],
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> list[CostRow]:
    """Server cost: instance hours x the instance type's hourly price, grouped."""
    dims = list(dict.fromkeys(group_by))
    totals: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    spans = await instance_spans(
        session,
        span.start,
        span.end,
        projects=projects,
        project_id=project_id,
        deployment_id=deployment_id,
    )
    for s in spans:
        for day, hours in _by_day(s.start, s.end):
            values = {
                CostDimension.day: day,
                CostDimension.project: s.project_id,
                CostDimension.deployment: s.deployment_id,
                CostDimension.instance: s.instance_id,
            }
            key = (*(values[d] for d in dims), s.currency)
            totals[key][0] += hours
            totals[key][1] += hours * s.price_per_hour
    names: dict[uuid.UUID, str] = {}
    if CostDimension.deployment in dims:
        ids = {k[dims.index(CostDimension.deployment)] for k in totals}
        if ids:
            found = await session.exec(select(Deployment).where(col(Deployment.id).in_(ids)))
            names = {d.id: d.name for d in found.all()}
    fields: dict[CostDimension, str] = {
        CostDimension.day: "day",
        CostDimension.project: "project_id",
        CostDimension.deployment: "deployment_id",
        CostDimension.instance: "instance_id",
    }
    rows = []
    for key, (hours, cost) in sorted(totals.items(), key=lambda kv: [str(v) for v in kv[0]]):
        row: dict[str, Any] = {fields[d]: key[i] for i, d in enumerate(dims)}
        deployment = row.get("deployment_id")
        rows.append(
            CostRow(
                **row,
                deployment_name=names.get(deployment) if deployment else None,
                instance_hours=round(hours, 6),
                cost=round(cost, 6),
                currency=key[-1],
            )
        )
    return rows


async def storage_rows(
    session: AsyncSession,
    *,
    projects: set[uuid.UUID] | None,
    span: Window,
    group_by: list[CostDimension],
    per_volume: bool = False,
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> list[StorageRow]:
    """Volume cost grouped like `cost_rows` (or one row per volume)."""
    dims = list(dict.fromkeys(group_by))
    totals: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    found = await volume_spans(
        session,
        span.start,
        span.end,
        projects=projects,
        project_id=project_id,
        deployment_id=deployment_id,
    )
    volumes: dict[tuple[Any, ...], VolumeSpan] = {}
    for v in found:
        for day, hours in _by_day(v.start, v.end):
            values = {
                CostDimension.day: day,
                CostDimension.project: v.project_id,
                CostDimension.deployment: v.deployment_id,
                CostDimension.instance: v.instance_id,
            }
            volume = (v.instance_id, v.provider_volume_id) if per_volume else None
            key = (*(values[d] for d in dims), volume, v.currency)
            volumes[key] = v
            totals[key][0] += hours * v.size_gb / HOURS_PER_MONTH
            totals[key][1] += hours * v.size_gb * v.price_per_gb_month / HOURS_PER_MONTH
    fields: dict[CostDimension, str] = {
        CostDimension.day: "day",
        CostDimension.project: "project_id",
        CostDimension.deployment: "deployment_id",
        CostDimension.instance: "instance_id",
    }
    rows = []
    for key, (gb_months, cost) in sorted(totals.items(), key=lambda kv: [str(v) for v in kv[0]]):
        row: dict[str, Any] = {fields[d]: key[i] for i, d in enumerate(dims)}
        one = volumes[key] if per_volume else None
        if one is not None:
            row |= {
                "instance_id": one.instance_id,
                "deployment_id": one.deployment_id,
                "provider_volume_id": one.provider_volume_id,
                "size_gb": one.size_gb,
                "state": one.state,
            }
        rows.append(
            StorageRow(**row, gb_months=round(gb_months, 6), cost=round(cost, 6), currency=key[-1])
        )
    return rows


def totals(rows: Sequence[CostRow | StorageRow]) -> list[CurrencyAmount]:
    by_currency: dict[str, float] = defaultdict(float)
    for r in rows:
        by_currency[r.currency] += r.cost
    return [CurrencyAmount(currency=c, amount=round(a, 6)) for c, a in sorted(by_currency.items())]


async def spend_rate(
    session: AsyncSession,
    *,
    projects: set[uuid.UUID] | None,
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> list[CurrencyAmount]:
    """What the instances that may be running now cost per hour."""
    query = (
        select(InstanceType.currency, func.sum(InstanceType.price_per_hour))
        .join(Instance, col(Instance.instance_type_id) == InstanceType.id)
        .where(col(Instance.state).in_(LIVE_STATES))
        .group_by(col(InstanceType.currency))
        .order_by(col(InstanceType.currency))
    )
    if projects is not None:
        query = query.where(col(Instance.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(Instance.project_id) == project_id)
    if deployment_id is not None:
        query = query.where(col(Instance.deployment_id) == deployment_id)
    return [
        CurrencyAmount(currency=c, amount=round(float(a or 0), 6))
        for c, a in (await session.exec(query)).all()
    ]
