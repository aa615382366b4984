"""Server costs: each instance's uptime x its instance type's hourly price, summed by day,
project, deployment or instance; volume costs (size x the provider's price per GB-month); the
current spend rate; monthly statements per project."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.access import require_project, visible_project_ids
from api.csv_response import CSV_RESPONSE, csv_response
from api.deps import CurrentUser, SessionDep
from api.errors import ERRORS
from api.reports import (
    CostDimension,
    CostRow,
    CurrencyAmount,
    StorageRow,
    UsageDimension,
    UsageRow,
    cost_rows,
    month_window,
    spend_rate,
    storage_rows,
    totals,
    usage_rows,
    window,
)
from api.routers.projects import get_visible_project

router = APIRouter(tags=["costs"], responses=ERRORS)

Month = Path(pattern=r"^\d{4}-\d{2}$", description="a month, like 2026-11 (UTC)")


class CostReport(BaseModel):
    start: datetime
    end: datetime
    group_by: list[CostDimension]
    rows: list[CostRow]
    storage: list[StorageRow] = Field(description="volume cost, grouped the same way")
    totals: list[CurrencyAmount] = Field(description="compute and storage")
    spend_rate_per_hour: list[CurrencyAmount] = Field(
        description="what the instances that may be running now cost per hour"
    )


class Statement(BaseModel):
    project_id: uuid.UUID
    project_name: str
    month: str
    start: datetime
    end: datetime
    compute: list[CostRow] = Field(description="instance hours and cost per deployment")
    storage: list[StorageRow] = Field(description="one line per volume, kept ones included")
    usage: list[UsageRow] = Field(description="requests and tokens per key and model")
    totals: list[CurrencyAmount]


@router.get("/costs", response_model=CostReport)
async def get_costs(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None = Query(default=None, description="from (default: 30 days ago)"),
    end: datetime | None = Query(default=None, description="until, excluded (default: now)"),
    group_by: list[CostDimension] = Query(default=[CostDimension.day, CostDimension.deployment]),
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
) -> CostReport:
    if project_id is not None:
        await require_project(session, user, project_id)
    projects = await visible_project_ids(session, user)
    span = window(start, end)
    rows = await cost_rows(
        session,
        projects=projects,
        span=span,
        group_by=group_by,
        project_id=project_id,
        deployment_id=deployment_id,
    )
    storage = await storage_rows(
        session,
        projects=projects,
        span=span,
        group_by=group_by,
        project_id=project_id,
        deployment_id=deployment_id,
    )
    return CostReport(
        start=span.start,
        end=span.end,
        group_by=list(dict.fromkeys(group_by)),
        rows=rows,
        storage=storage,
        totals=totals([*rows, *storage]),
        spend_rate_per_hour=await spend_rate(
            session, projects=projects, project_id=project_id, deployment_id=deployment_id
        ),
    )


async def _statement(
    session: SessionDep, user: CurrentUser, project_id: uuid.UUID, month: str
) -> Statement:
    project = await get_visible_project(session, user, project_id)
    span = month_window(month)
    compute = await cost_rows(
        session,
        projects=None,
        span=span,
        group_by=[CostDimension.deployment],
        project_id=project.id,
    )
    storage = await storage_rows(
        session,
        projects=None,
        span=span,
        group_by=[],
        per_volume=True,
        project_id=project.id,
    )
    usage = await usage_rows(
        session,
        projects=None,
        span=span,
        group_by=[UsageDimension.key, UsageDimension.model],
        project_id=project.id,
    )
    return Statement(
        project_id=project.id,
        project_name=project.name,
        month=month,
        start=span.start,
        end=span.end,
        compute=compute,
        storage=storage,
        usage=usage,
        totals=totals([*compute, *storage]),
    )


@router.get("/projects/{project_id}/statements/{month}", response_model=Statement)
async def get_statement(
    project_id: uuid.UUID, session: SessionDep, user: CurrentUser, month: str = Month
) -> Statement:
    """The project's monthly statement: compute cost per deployment, volume cost per volume,
    usage per key and model."""
    return await _statement(session, user, project_id, month)


@router.get(
    "/projects/{project_id}/statements/{month}/csv",
    response_class=Response,
    responses=CSV_RESPONSE,
)
async def export_statement(
    project_id: uuid.UUID, session: SessionDep, user: CurrentUser, month: str = Month
) -> Response:
    """The monthly statement as CSV: one line per deployment (compute), per volume (storage),
    per key and model (usage), then the totals."""
    s = await _statement(session, user, project_id, month)
    header = [
        "section", "deployment", "api_key", "model", "instance_hours", "requests",
        "input_tokens", "output_tokens", "cost", "currency",
    ]  # fmt: skip
    lines: list[list[object]] = []
    for c in s.compute:
        lines.append(
            ["compute", c.deployment_name or c.deployment_id, None, None, c.instance_hours,
             None, None, None, c.cost, c.currency]
        )  # fmt: skip
    for v in s.storage:
        volume = f"{v.provider_volume_id} ({v.size_gb:g} GB, {v.state})"
        lines.append(
            ["storage", volume, None, None, None, None, None, None, v.cost, v.currency]
        )  # fmt: skip
    for u in s.usage:
        key = f"{u.api_key_name} ({u.api_key_prefix}…)" if u.api_key_name else u.api_key_id
        lines.append(
            ["usage", None, key, u.model, None, u.requests, u.input_tokens, u.output_tokens,
             None, None]
        )  # fmt: skip
    for t in s.totals:
        lines.append(["total", None, None, None, None, None, None, None, t.amount, t.currency])
    return csv_response(header, lines, f"statement-{s.project_id}-{month}.csv")
