"""Usage: requests, errors and tokens in/out by project, key, model, deployment and day, from
the gateway's request logs."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from api.access import require_project, visible_project_ids
from api.csv_response import CSV_RESPONSE, csv_response
from api.deps import CurrentUser, SessionDep
from api.errors import ERRORS
from api.reports import UsageDimension, UsageRow, usage_rows, window

router = APIRouter(prefix="/usage", tags=["usage"], responses=ERRORS)

ALL_DIMENSIONS = [
    UsageDimension.day,
    UsageDimension.project,
    UsageDimension.key,
    UsageDimension.model,
]


class UsageReport(BaseModel):
    start: datetime
    end: datetime
    group_by: list[UsageDimension]
    rows: list[UsageRow]
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int


async def _report(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None,
    end: datetime | None,
    group_by: list[UsageDimension],
    project_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    deployment_id: uuid.UUID | None,
    model: str | None,
) -> UsageReport:
    if project_id is not None:
        await require_project(session, user, project_id)
    span = window(start, end)
    rows = await usage_rows(
        session,
        projects=await visible_project_ids(session, user),
        span=span,
        group_by=group_by,
        project_id=project_id,
        api_key_id=api_key_id,
        deployment_id=deployment_id,
        model=model,
    )
    return UsageReport(
        start=span.start,
        end=span.end,
        group_by=list(dict.fromkeys(group_by)),
        rows=rows,
        requests=sum(r.requests for r in rows),
        errors=sum(r.errors for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
    )


@router.get("", response_model=UsageReport)
async def get_usage(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None = Query(default=None, description="from (default: 30 days ago)"),
    end: datetime | None = Query(default=None, description="until, excluded (default: now)"),
    group_by: list[UsageDimension] = Query(default=ALL_DIMENSIONS),
    project_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    model: str | None = Query(default=None, max_length=255),
) -> UsageReport:
    """Usage of the caller's projects, grouped by the dimensions asked for (UTC days)."""
    return await _report(
        session, user, start, end, group_by, project_id, api_key_id, deployment_id, model
    )


@router.get("/export", response_class=Response, responses=CSV_RESPONSE)
async def export_usage(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None = None,
    end: datetime | None = None,
    project_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    model: str | None = Query(default=None, max_length=255),
) -> Response:
    """The same as GET /usage by day, project, key and model, as a CSV file."""
    report = await _report(
        session, user, start, end, ALL_DIMENSIONS, project_id, api_key_id, deployment_id, model
    )
    header = [
        "day", "project_id", "api_key_id", "api_key_name", "model",
        "requests", "errors", "input_tokens", "output_tokens",
    ]  # fmt: skip
    rows = ([getattr(r, field) for field in header] for r in report.rows)
    return csv_response(header, rows, "usage.csv")
