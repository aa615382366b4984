"""The fleet as Prometheus sees it: gauges read from PostgreSQL at each scrape of the API's
/metrics, so every API replica reports the same values and no state is kept in a process.

Label names: `project`, `deployment` (names), `model` (the served name, as the gateway labels its
metrics, so rules can join on it), `instance_id` (never `instance`, which Prometheus reserves for
the scrape target).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import ValidationError
from sqlalchemy import and_, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.reports import CostDimension, cost_rows, month_window
from core.autoscaling import AutoscalingConfig
from core.models import (
    ActionStatus,
    Deployment,
    Instance,
    InstanceAction,
    InstanceState,
    Project,
    Provider,
)
from core.states import LIVE_STATES

# Steps of termination whose failure leaves something at the provider that still costs money.
CLEANUP_STEPS = ("delete_server", "confirm_gone", "delete_volume", "release_ips")

FLEET_METRICS = (
    "inventiv_instances",
    "inventiv_instance_needs_attention",
    "inventiv_instance_cleanup_failures",
    "inventiv_deployment_max_instances",
    "inventiv_deployment_max_queue_wait_seconds",
    "inventiv_project_cost_month_to_date",
    "inventiv_project_monthly_budget",
)


class _Names:
    """Project, deployment and served names, read once per scrape."""

    def __init__(self, projects: dict[uuid.UUID, str], deployments: list[Deployment]) -> None:
        self.projects = projects
        self.deployments = {d.id: d for d in deployments}

    def of_deployment(self, deployment_id: uuid.UUID) -> tuple[str, str, str]:
        d = self.deployments[deployment_id]
        return self.projects.get(d.project_id, ""), d.name, d.served_name


async def render_fleet(
    session: AsyncSession,
    *,
    heartbeat_fresh_s: float,
    budgets: dict[str, float],
    now: datetime | None = None,
) -> bytes:
    now = now or datetime.now(UTC)
    registry = CollectorRegistry()
    projects = {p.id: p.name for p in (await session.exec(select(Project))).all()}
    deployments = list((await session.exec(select(Deployment))).all())
    names = _Names(projects, deployments)
    await _instances(session, registry, names)
    await _needs_attention(session, registry, names, now, heartbeat_fresh_s)
    await _cleanup_failures(session, registry, names)
    _deployments(registry, names, [d for d in deployments if d.deleted_at is None])
    await _costs(session, registry, projects, now, budgets)
    return generate_latest(registry)


async def _instances(session: AsyncSession, registry: CollectorRegistry, names: _Names) -> None:
    gauge = Gauge(
        "inventiv_instances",
        "Instances that may exist at a provider, by state",
        ["project", "deployment", "model", "provider", "state"],
        registry=registry,
    )
    query = (
        select(Instance.deployment_id, Provider.name, Instance.state, func.count())
        .join(Provider, col(Provider.id) == Instance.provider_id)
        .where(col(Instance.state).in_(LIVE_STATES))
        .group_by(col(Instance.deployment_id), col(Provider.name), col(Instance.state))
    )
    for deployment_id, provider, state, count in (await session.exec(query)).all():
        labels = names.of_deployment(deployment_id)
        gauge.labels(*labels, provider, InstanceState(state).value).set(count)


async def _needs_attention(
    session: AsyncSession,
    registry: CollectorRegistry,
    names: _Names,
    now: datetime,
    heartbeat_fresh_s: float,
) -> None:
    gauge = Gauge(
        "inventiv_instance_needs_attention",
        "1 for each reason a live instance needs an operator: startup_failed, "
        "agent_integrity (wrong agent version or checksum), heartbeat_stale (ready, silent), "
        "cleanup_failing (a cleanup step keeps failing: something may be left at the provider)",
        ["project", "deployment", "model", "instance_id", "reason"],
        registry=registry,
    )
    stale_before = now - timedelta(seconds=heartbeat_fresh_s)
    rows = (await session.exec(select(Instance).where(col(Instance.state).in_(LIVE_STATES)))).all()
    for instance in rows:
        reasons = []
        if instance.state == InstanceState.startup_failed:
            reasons.append("startup_failed")
        if instance.agent_integrity_ok is False:
            reasons.append("agent_integrity")
        if instance.attention is not None:
            reasons.append("cleanup_failing")
        if instance.state == InstanceState.ready and (
            instance.last_heartbeat_at is None or instance.last_heartbeat_at < stale_before
        ):
            reasons.append("heartbeat_stale")
        for reason in reasons:
            labels = names.of_deployment(instance.deployment_id)
            gauge.labels(*labels, str(instance.id), reason).set(1)


async def _cleanup_failures(
    session: AsyncSession, registry: CollectorRegistry, names: _Names
) -> None:
    gauge = Gauge(
        "inventiv_instance_cleanup_failures",
        "Failed attempts to delete a terminating instance's server, volumes or IPs",
        ["project", "deployment", "model", "instance_id", "step"],
        registry=registry,
    )
    query = (
        select(Instance.id, Instance.deployment_id, InstanceAction.step, func.count())
        .join(
            InstanceAction,
            and_(
                col(InstanceAction.instance_id) == Instance.id,
                col(InstanceAction.status) == ActionStatus.failed,
                col(InstanceAction.step).in_(CLEANUP_STEPS),
            ),
        )
        .where(col(Instance.state) == InstanceState.terminating)
        .group_by(col(Instance.id), col(Instance.deployment_id), col(InstanceAction.step))
    )
    for instance_id, deployment_id, step, count in (await session.exec(query)).all():
        gauge.labels(*names.of_deployment(deployment_id), str(instance_id), step).set(count)


def _deployments(registry: CollectorRegistry, names: _Names, live: Iterable[Deployment]) -> None:
    labels = ["project", "deployment", "model"]
    max_instances = Gauge(
        "inventiv_deployment_max_instances",
        "Most instances the deployment may run",
        labels,
        registry=registry,
    )
    max_wait = Gauge(
        "inventiv_deployment_max_queue_wait_seconds",
        "Average queue wait above which the autoscaler adds an instance",
        labels,
        registry=registry,
    )
    for d in live:
        values = names.of_deployment(d.id)
        max_instances.labels(*values).set(d.max_instances)
        try:
            config = AutoscalingConfig.model_validate(d.autoscaling)
        except ValidationError:  # shown as the autoscaler's decision, not a threshold
            continue
        max_wait.labels(*values).set(config.scale_up_queue_wait_s)


async def _costs(
    session: AsyncSession,
    registry: CollectorRegistry,
    projects: dict[uuid.UUID, str],
    now: datetime,
    budgets: dict[str, float],
) -> None:
    cost = Gauge(
        "inventiv_project_cost_month_to_date",
        "Server cost of the project since the start of the month (UTC)",
        ["project", "currency"],
        registry=registry,
    )
    budget = Gauge(
        "inventiv_project_monthly_budget",
        "The project's monthly budget (INVENTIV_PROJECT_MONTHLY_BUDGETS)",
        ["project"],
        registry=registry,
    )
    month = month_window(now.strftime("%Y-%m"))
    span = type(month)(month.start, now)
    for row in await cost_rows(session, projects=None, span=span, group_by=[CostDimension.project]):
        if row.project_id in projects:
            cost.labels(projects[row.project_id], row.currency).set(row.cost)
    for name, amount in budgets.items():
        budget.labels(name).set(amount)
