"""The API's /metrics and Prometheus service discovery, as Prometheus and an operator see them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.models import ActionStatus, InstanceAction, InstanceState, utcnow
from tests.api.conftest import Tenant, add_instance

TOKEN = "scrape-token-for-tests"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


@pytest.fixture(autouse=True)
def metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTIV_METRICS_TOKEN", TOKEN)


async def test_scraping_needs_the_token_or_an_admin(
    client: httpx.AsyncClient, alice: Tenant, admin: Tenant
) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await client.get("/metrics", headers=wrong)).status_code == 401
    assert (await client.get("/metrics", headers=alice.headers)).status_code == 403
    sd = "/api/v1/prometheus/targets"
    assert (await client.get(sd, headers=alice.headers)).status_code == 403
    assert (await client.get("/metrics", headers=admin.headers)).status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get(sd, headers=bearer)).status_code == 200


async def test_fleet_gauges_name_what_needs_an_operator(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = alice.project.name
    monkeypatch.setenv("INVENTIV_PROJECT_MONTHLY_BUDGETS", f'{{"{project}": 0.5}}')
    await add_instance(sessionmaker, alice, created_at=utcnow() - timedelta(hours=2))
    failed = await add_instance(sessionmaker, alice, state=InstanceState.startup_failed)
    stuck = await add_instance(sessionmaker, alice, state=InstanceState.terminating)
    async with sessionmaker() as session:
        for _ in range(3):
            session.add(
                InstanceAction(
                    instance_id=stuck.id,
                    step="delete_server",
                    status=ActionStatus.failed,
                    error="provider said 500",
                )
            )
        await session.commit()

    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    found = samples(response.text)
    model = alice.deployment.served_name

    states = {lab["state"]: v for lab, v in found["inventiv_instances"] if lab["model"] == model}
    assert states == {"ready": 1, "startup_failed": 1, "terminating": 1}
    attention = {
        (lab["instance_id"], lab["reason"]) for lab, _ in found["inventiv_instance_needs_attention"]
    }
    assert (str(failed.id), "startup_failed") in attention
    # the ready instance never sent a heartbeat
    assert any(reason == "heartbeat_stale" for _, reason in attention)
    cleanup = found["inventiv_instance_cleanup_failures"]
    assert [(lab["instance_id"], lab["step"], v) for lab, v in cleanup] == [
        (str(stuck.id), "delete_server", 3)
    ]
    wait = found["inventiv_deployment_max_queue_wait_seconds"]
    assert [(lab["model"], v) for lab, v in wait if lab["model"] == model] == [(model, 5.0)]
    cost = {lab["project"]: v for lab, v in found["inventiv_project_cost_month_to_date"]}
    # two hours at 1 EUR/h, unless the month began less than two hours ago
    assert 0 < cost[project] <= 2.01
    assert found["inventiv_project_monthly_budget"] == [({"project": project}, 0.5)]


async def test_service_discovery_lists_live_agents_and_engines(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    live = await add_instance(sessionmaker, alice)
    gone = await add_instance(sessionmaker, alice, state=InstanceState.terminated)
    async with sessionmaker() as session:
        for instance, port in ((live, 18090), (gone, 18091)):
            row = await session.get(type(instance), instance.id)
            assert row is not None
            row.agent_url = f"http://10.0.0.7:{port}"
            row.engine_url = f"http://10.0.0.7:{port + 1000}/"
            session.add(row)
        await session.commit()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    agents = (await client.get("/api/v1/prometheus/targets", headers=bearer)).json()
    assert agents == [
        {
            "targets": ["10.0.0.7:18090"],
            "labels": {
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
                "instance_id": str(live.id),
                "deployment": alice.deployment.name,
                "model": alice.deployment.served_name,
                "project": alice.project.name,
                "state": "ready",
            },
        }
    ]
    engines = (await client.get("/api/v1/prometheus/targets?role=engine", headers=bearer)).json()
    assert [g["targets"] for g in engines] == [["10.0.0.7:19090"]]
    bad = await client.get("/api/v1/prometheus/targets?role=gpu", headers=bearer)
    assert bad.status_code == 422
