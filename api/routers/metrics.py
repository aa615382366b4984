"""Time series for charts: request rate, TTFT and latency percentiles, error rate and tokens
per second (request_logs); GPU utilisation and memory, engine queue and KV cache
(instance_metrics). Per project, deployment or instance, downsampled into buckets with
`date_bin` (plain PostgreSQL and TimescaleDB alike) so a month loads fast."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import col

from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, SessionDep
from api.errors import ERRORS
from api.reports import Window, traffic_totals, window
from api.routers.deployments import get_visible_deployment
from api.routers.instances import get_visible_instance
from core.models import Instance, InstanceMetric, RequestLog

router = APIRouter(prefix="/metrics", tags=["metrics"], responses=ERRORS)

MAX_POINTS = 1000
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


class RequestPoint(BaseModel):
    at: datetime = Field(description="start of the bucket")
    requests: int
    request_rate_per_s: float
    errors: int
    error_rate: float = Field(description="share of requests answered with a status >= 400")
    input_tokens: int
    output_tokens: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class RequestSeries(BaseModel):
    start: datetime
    end: datetime
    step_s: int
    points: list[RequestPoint]


class GpuPoint(BaseModel):
    at: datetime
    gpu_utilization: float | None = Field(description="mean over the bucket, percent")
    gpu_memory_used_mb: float | None
    gpu_memory_total_mb: float | None
    gpu_temperature_c: float | None
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage: float | None


class InstanceGpuSeries(BaseModel):
    instance_id: uuid.UUID
    points: list[GpuPoint]


class GpuSeries(BaseModel):
    start: datetime
    end: datetime
    step_s: int
    instances: list[InstanceGpuSeries]


def step_for(span: Window, step_s: int | None) -> int:
    """The bucket width: as asked, but never so small that the range has more than
    MAX_POINTS buckets (the default aims at about 240 points)."""
    seconds = (span.end - span.start).total_seconds()
    floor = math.ceil(seconds / MAX_POINTS)
    wanted = step_s if step_s is not None else math.ceil(seconds / 240)
    return max(1, floor, wanted)


def _bucket(step: int, column: Any) -> Any:
    return func.date_bin(timedelta(seconds=step), column, ORIGIN).label("at")


async def _scope(
    session: SessionDep,
    user: CurrentUser,
    project_id: uuid.UUID | None,
    deployment_id: uuid.UUID | None,
    instance_id: uuid.UUID | None,
) -> set[uuid.UUID] | None:
    """Checks the filters name things the caller can see; returns the visible projects."""
    if project_id is not None:
        await require_project(session, user, project_id)
    if deployment_id is not None:
        await get_visible_deployment(session, user, deployment_id)
    if instance_id is not None:
        await get_visible_instance(session, user, instance_id)
    return await visible_project_ids(session, user)


@router.get("/requests", response_model=RequestSeries)
async def request_metrics(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None = Query(default=None, description="from (default: an hour ago)"),
    end: datetime | None = Query(default=None, description="until (default: now)"),
    step_s: int | None = Query(default=None, ge=1, le=86400 * 31, description="bucket width"),
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    instance_id: uuid.UUID | None = None,
) -> RequestSeries:
    """Traffic through the gateway, bucketed; buckets without requests are left out."""
    projects = await _scope(session, user, project_id, deployment_id, instance_id)
    span = window(start, end, default=timedelta(hours=1))
    step = step_for(span, step_s)
    log = RequestLog
    at = _bucket(step, col(log.at))
    query = (
        sa_select(
            at,
            *traffic_totals(),
            func.percentile_cont(0.5).within_group(col(log.ttft_ms)).label("ttft_p50_ms"),
            func.percentile_cont(0.95).within_group(col(log.ttft_ms)).label("ttft_p95_ms"),
            func.percentile_cont(0.5).within_group(col(log.latency_ms)).label("latency_p50_ms"),
            func.percentile_cont(0.95).within_group(col(log.latency_ms)).label("latency_p95_ms"),
            func.percentile_cont(0.99).within_group(col(log.latency_ms)).label("latency_p99_ms"),
        )
        .where(col(log.at) >= span.start, col(log.at) < span.end)
        .group_by(at)
        .order_by(at)
    )
    if projects is not None:
        query = query.where(col(log.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(log.project_id) == project_id)
    if deployment_id is not None:
        query = query.where(col(log.deployment_id) == deployment_id)
    if instance_id is not None:
        query = query.where(col(log.instance_id) == instance_id)
    points = []
    for row in (await session.execute(query)).all():
        r = row._mapping
        points.append(
            RequestPoint(
                **r,
                request_rate_per_s=r["requests"] / step,
                error_rate=r["errors"] / r["requests"] if r["requests"] else 0.0,
                output_tokens_per_s=r["output_tokens"] / step,
            )
        )
    return RequestSeries(start=span.start, end=span.end, step_s=step, points=points)


@router.get("/gpu", response_model=GpuSeries)
async def gpu_metrics(
    session: SessionDep,
    user: CurrentUser,
    start: datetime | None = Query(default=None, description="from (default: an hour ago)"),
    end: datetime | None = Query(default=None, description="until (default: now)"),
    step_s: int | None = Query(default=None, ge=1, le=86400 * 31, description="bucket width"),
    project_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    instance_id: uuid.UUID | None = None,
) -> GpuSeries:
    """GPU and engine load reported by the agents' heartbeats, one series per instance."""
    projects = await _scope(session, user, project_id, deployment_id, instance_id)
    span = window(start, end, default=timedelta(hours=1))
    step = step_for(span, step_s)
    m = InstanceMetric
    at = _bucket(step, col(m.at))
    query = (
        sa_select(
            col(m.instance_id),
            at,
            func.avg(m.gpu_utilization).label("gpu_utilization"),
            func.avg(m.gpu_memory_used_mb).label("gpu_memory_used_mb"),
            func.max(m.gpu_memory_total_mb).label("gpu_memory_total_mb"),
            func.max(m.gpu_temperature_c).label("gpu_temperature_c"),
            func.avg(m.requests_running).label("requests_running"),
            func.avg(m.requests_waiting).label("requests_waiting"),
            func.avg(m.kv_cache_usage).label("kv_cache_usage"),
        )
        .join(Instance, col(Instance.id) == m.instance_id)
        .where(col(m.at) >= span.start, col(m.at) < span.end)
        .group_by(col(m.instance_id), at)
        .order_by(col(m.instance_id), at)
    )
    if projects is not None:
        query = query.where(col(Instance.project_id).in_(projects))
    if project_id is not None:
        query = query.where(col(Instance.project_id) == project_id)
    if deployment_id is not None:
        query = query.where(col(Instance.deployment_id) == deployment_id)
    if instance_id is not None:
        query = query.where(col(m.instance_id) == instance_id)
    series: dict[uuid.UUID, list[GpuPoint]] = {}
    for row in (await session.execute(query)).all():
        r = dict(row._mapping)
        series.setdefault(r.pop("instance_id"), []).append(GpuPoint(**r))
    return GpuSeries(
        start=span.start,
        end=span.end,
        step_s=step,
        instances=[InstanceGpuSeries(instance_id=k, points=v) for k, v in series.items()],
    )
