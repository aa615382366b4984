"""The dashboard's overview: instances by state, spend rate, today's traffic and cost."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import col, select

from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, SessionDep
from api.errors import ERRORS
from api.reports import (
    CostDimension,
    CurrencyAmount,
    Window,
    cost_rows,
    spend_rate,
    totals,
    usage_rows,
)
from core.models import Instance, InstanceState, utcnow

router = APIRouter(prefix="/overview", tags=["overview"], responses=ERRORS)


class Today(BaseModel):
    requests: int
    errors: int
    error_rate: float
    input_tokens: int
    output_tokens: int
    cost: list[CurrencyAmount]


class Overview(BaseModel):
    instances_by_state: dict[InstanceState, int]
    spend_rate_per_hour: list[CurrencyAmount]
    today: Today = Field(description="since 00:00 UTC")


@router.get("", response_model=Overview)
async def get_overview(
    session: SessionDep, user: CurrentUser, project_id: uuid.UUID | None = None
) -> Overview:
    if project_id is not None:
        await require_project(session, user, project_id)
    projects = await visible_project_ids(session, user)
    query = select(Instance.state, func.count()).group_by(col(Instance.state))
    if projects is not None:
        query = query.where(col(Instance.project_id).in_(projects))
    if project_id is not None:
        query = query.where(Instance.project_id == project_id)
    by_state = {state: count for state, count in (await session.exec(query)).all()}
    now = utcnow()
    today = Window(datetime.combine(now.date(), time.min, UTC), now)
    usage = await usage_rows(
        session, projects=projects, span=today, group_by=[], project_id=project_id
    )
    traffic = usage[0] if usage else None
    requests = traffic.requests if traffic else 0
    errors = traffic.errors if traffic else 0
    costs = await cost_rows(
        session, projects=projects, span=today, group_by=[CostDimension.day], project_id=project_id
    )
    return Overview(
        instances_by_state={s: by_state.get(s, 0) for s in InstanceState},
        spend_rate_per_hour=await spend_rate(session, projects=projects, project_id=project_id),
        today=Today(
            requests=requests,
            errors=errors,
            error_rate=errors / requests if requests else 0.0,
            input_tokens=traffic.input_tokens if traffic else 0,
            output_tokens=traffic.output_tokens if traffic else 0,
            cost=totals(costs),
        ),
    )
