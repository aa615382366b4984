"""What Prometheus reads from the API: the fleet's gauges at /metrics, and HTTP service
discovery of every live instance's agent and engine at /api/v1/prometheus/targets.

Both take `Authorization: Bearer <INVENTIV_METRICS_TOKEN>` (what Prometheus is configured with)
or an admin's session token: target lists name machines' addresses, which members never see.
"""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlmodel import col, select

from api.deps import RedisDep, SessionDep, SessionToken, SettingsDep, authenticate
from api.errors import ERRORS
from api.fleet_metrics import render_fleet
from core.models import Deployment, Instance, Project, Role
from core.observability import ObservabilitySettings
from core.states import LIVE_STATES

router = APIRouter(tags=["prometheus"], responses=ERRORS)


def observability_settings() -> ObservabilitySettings:
    return ObservabilitySettings()


async def require_scraper(
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    token: SessionToken,
    observability: Annotated[ObservabilitySettings, Depends(observability_settings)],
) -> ObservabilitySettings:
    """The metrics token, or an admin's session."""
    expected = observability.metrics_token
    if token and expected and hmac.compare_digest(token, expected.get_secret_value()):
        return observability
    user = await authenticate(session, redis, settings, token)
    if user.role != Role.admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the metrics token or an admin's session is required"
        )
    return observability


Scraper = Annotated[ObservabilitySettings, Depends(require_scraper)]


class TargetRole(StrEnum):
    agent = "agent"
    engine = "engine"


class TargetGroup(BaseModel):
    """One entry of Prometheus' HTTP service-discovery format."""

    targets: list[str]
    labels: dict[str, str]


@router.get("/metrics", include_in_schema=False)
async def fleet_metrics(session: SessionDep, settings: SettingsDep, scraper: Scraper) -> Response:
    body = await render_fleet(
        session,
        heartbeat_fresh_s=settings.heartbeat_fresh_s,
        budgets=scraper.project_monthly_budgets,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/prometheus/targets", response_model=list[TargetGroup])
async def prometheus_targets(
    session: SessionDep,
    _scraper: Scraper,
    role: TargetRole = Query(default=TargetRole.agent, description="agents or their engines"),
) -> list[TargetGroup]:
    """Live instances' agents (or engines) in Prometheus' `http_sd_configs` format."""
    query = (
        select(Instance, Deployment.name, Deployment.served_name, Project.name)
        .join(Deployment, col(Deployment.id) == Instance.deployment_id)
        .join(Project, col(Project.id) == Instance.project_id)
        .where(col(Instance.state).in_(LIVE_STATES))
        .order_by(col(Instance.created_at))
    )
    groups = []
    for instance, deployment, model, project in (await session.exec(query)).all():
        url = instance.agent_url if role == TargetRole.agent else instance.engine_url
        if not url:
            continue  # not booted far enough to have an address yet
        scheme, _, rest = url.partition("://")
        host, _, path = rest.partition("/")
        groups.append(
            TargetGroup(
                targets=[host],
                labels={
                    "__scheme__": scheme,
                    "__metrics_path__": f"/{path.rstrip('/')}/metrics".replace("//", "/"),
                    "instance_id": str(instance.id),
                    "deployment": deployment,
                    "model": model,
                    "project": project,
                    "state": instance.state.value,
                },
            )
        )
    return groups
