"""Project quotas and budgets: set by admins, shown to members, enforced where instances are
created (the API and the autoscaler, with the project row locked) and where keys get limits;
volumes are billed in costs and monthly statements."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func
from sqlmodel import select
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.autoscale import AutoscaleActivities
from activities.contracts import ScaleUpInput
from core.models import (
    Instance,
    InstanceState,
    InstanceVolume,
    Provider,
    ScalingAction,
    ScalingDecision,
)
from core.redis_keys import EVENTS_STREAM
from tests.api.conftest import Tenant, add_instance


async def set_quota(
    client: httpx.AsyncClient, admin: Tenant, tenant: Tenant, **limits: Any
) -> None:
    response = await client.put(
        f"/api/v1/projects/{tenant.project.id}/quota", json=limits, headers=admin.headers
    )
    assert response.status_code == 200, response.text


async def instance_count(sessionmaker: Any, tenant: Tenant) -> int:
    async with sessionmaker() as session:
        query = select(func.count()).select_from(Instance)
        return int(
            (await session.exec(query.where(Instance.project_id == tenant.project.id))).one()
        )


async def provision(client: httpx.AsyncClient, tenant: Tenant) -> httpx.Response:
    return await client.post(
        f"/api/v1/deployments/{tenant.deployment.id}/instances", headers=tenant.headers
    )


@pytest.fixture(autouse=True)
async def no_workflows_left(temporal_client: Client, sessionmaker: Any) -> Any:
    """No worker runs in these tests: the instance workflows started are ended afterwards."""
    yield
    async with sessionmaker() as session:
        workflow_ids = (await session.exec(select(Instance.workflow_id))).all()
    for workflow_id in workflow_ids:
        with contextlib.suppress(RPCError):
            await temporal_client.get_workflow_handle(workflow_id).terminate("test over")


async def test_instances_at_once_hold_under_concurrent_requests(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, admin: Tenant
) -> None:
    await set_quota(client, admin, alice, max_instances=2)
    answers = await asyncio.gather(*(provision(client, alice) for _ in range(5)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202, 202, 409, 409, 409]
    refused = next(r for r in answers if r.status_code == 409)
    assert "quota allows 2 instance(s) at once and 2 are live" in refused.json()["detail"]
    assert await instance_count(sessionmaker, alice) == 2  # nothing else provisioned


async def test_gpus_and_instance_types_are_limited(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, admin: Tenant
) -> None:
    await set_quota(client, admin, alice, max_gpus=1)
    assert (await provision(client, alice)).status_code == 202
    over = await provision(client, alice)
    assert over.status_code == 409 and "allows 1 GPU(s) at once" in over.json()["detail"]

    await set_quota(client, admin, alice, allowed_instance_type_ids=[str(uuid.uuid4())])
    refused = await provision(client, alice)
    assert refused.status_code == 403
    assert f"does not allow instance type {alice.instance_type.name}" in refused.json()["detail"]
    assert await instance_count(sessionmaker, alice) == 1


async def test_budget_warns_then_stops_new_instances(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, admin: Tenant
) -> None:
    # 1 EUR/h since the start of the month, or for the last 2 hours early on the 1st.
    now = datetime.now(UTC)
    since = max(
        now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), now - timedelta(hours=2)
    )
    hours = (now - since).total_seconds() / 3600
    await add_instance(sessionmaker, alice, state=InstanceState.ready, created_at=since)
    await set_quota(client, admin, alice, monthly_budget=hours / 0.9, budget_warning_percent=80)
    quota = (
        await client.get(f"/api/v1/projects/{alice.project.id}/quota", headers=alice.headers)
    ).json()
    assert quota["use"]["instances"] == 1 and quota["use"]["warning"] is True
    assert quota["use"]["stopped"] is False and 89 < quota["use"]["budget_used_percent"] < 100

    await set_quota(client, admin, alice, monthly_budget=hours / 2)
    quota = (
        await client.get(f"/api/v1/projects/{alice.project.id}/quota", headers=alice.headers)
    ).json()
    assert quota["use"]["stopped"] is True
    refused = await provision(client, alice)
    assert refused.status_code == 409 and "monthly budget is spent" in refused.json()["detail"]
    assert await instance_count(sessionmaker, alice) == 1

    by_member = await client.put(
        f"/api/v1/projects/{alice.project.id}/quota", json={}, headers=alice.headers
    )
    assert by_member.status_code == 403


async def test_the_autoscaler_gets_no_more_than_the_quota(
    client: httpx.AsyncClient,
    sessionmaker: Any,
    redis_client: aioredis.Redis,
    alice: Tenant,
    admin: Tenant,
) -> None:
    await set_quota(client, admin, alice, max_instances=1)
    started: list[uuid.UUID] = []

    async def start_instance(instance_id: uuid.UUID) -> None:
        started.append(instance_id)

    async def drain_instance(*_: Any) -> bool:
        return True

    activities = AutoscaleActivities(
        sessionmaker, redis_client, start_instance, drain_instance, providers={}
    )
    wanted = [str(uuid.uuid4()) for _ in range(3)]
    decision = ScalingDecision(
        id=uuid.uuid4(),
        deployment_id=alice.deployment.id,
        at=datetime.now(UTC),
        delta=3,
        action=ScalingAction.scale_up,
        reason="busy",
        instances=0,
    )
    async with sessionmaker() as session:
        session.add(decision)
        await session.commit()
    await ActivityEnvironment().run(
        activities.scale_up,
        ScaleUpInput(str(alice.deployment.id), str(decision.id), wanted, "busy"),
    )
    assert [str(i) for i in started] == wanted[:1]
    assert await instance_count(sessionmaker, alice) == 1
    [(_, fields)] = await redis_client.xrevrange(EVENTS_STREAM, count=1)  # type: ignore[misc]
    result = json.loads(str(fields["event"]))["data"]["result"]  # type: ignore[index]
    assert result["started"] == wanted[:1] and "quota" in result["held_back_by_quota"]


async def test_key_limits_stay_under_the_ceiling(
    client: httpx.AsyncClient, alice: Tenant, admin: Tenant
) -> None:
    await set_quota(client, admin, alice, max_key_rpm=100, max_key_tpm=10_000)
    seeded = await client.get(f"/api/v1/keys/{alice.api_key_row.id}", headers=alice.headers)
    assert (seeded.json()["rpm_limit"], seeded.json()["tpm_limit"]) == (100, 10_000)  # lowered

    new = {"project_id": str(alice.project.id), "name": "k"}
    created = await client.post("/api/v1/keys", json=new, headers=alice.headers)
    key = created.json()
    assert (key["rpm_limit"], key["tpm_limit"]) == (100, 10_000)  # no limit: the ceiling
    too_high = await client.post(
        "/api/v1/keys", json=new | {"rpm_limit": 500}, headers=alice.headers
    )
    assert too_high.status_code == 403 and "above the project's ceiling of 100" in too_high.text

    url = f"/api/v1/keys/{key['id']}"
    lowered = await client.patch(url, json={"rpm_limit": 50}, headers=alice.headers)
    assert lowered.status_code == 200 and lowered.json()["rpm_limit"] == 50
    lifted = await client.patch(url, json={"rpm_limit": 200}, headers=alice.headers)
    assert lifted.status_code == 403
    removed = await client.patch(url, json={"rpm_limit": None}, headers=alice.headers)
    assert removed.json()["rpm_limit"] == 100  # "no limit" means the ceiling


async def test_kept_volumes_are_billed_in_costs_and_statements(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    october = datetime(2026, 10, 1, tzinfo=UTC)
    instance = await add_instance(
        sessionmaker,
        alice,
        state=InstanceState.terminated,
        created_at=october,
        terminated_at=october + timedelta(hours=10),
    )
    async with sessionmaker() as session:
        provider = await session.get(Provider, alice.provider.id)
        provider.volume_price_per_gb_month = 0.1
        session.add(provider)
        session.add(
            InstanceVolume(
                instance_id=instance.id,
                provider_volume_id="vol-kept",
                volume_type="data",
                size_gb=100,
                delete_on_terminate=False,
                state="kept",
                created_at=october,
            )
        )
        await session.commit()

    url = f"/api/v1/projects/{alice.project.id}/statements/2026-10"
    statement = (await client.get(url, headers=alice.headers)).json()
    [volume] = statement["storage"]
    expected = round(100 * 0.1 * 31 * 24 / 730, 6)  # all of October: kept after the instance
    assert (volume["provider_volume_id"], volume["state"], volume["cost"]) == (
        "vol-kept",
        "kept",
        expected,
    )
    compute = 10 * alice.instance_type.price_per_hour
    assert statement["totals"] == [{"currency": "EUR", "amount": round(compute + expected, 6)}]
    rows = list(
        csv.DictReader(io.StringIO((await client.get(url + "/csv", headers=alice.headers)).text))
    )
    assert [r["section"] for r in rows] == ["compute", "storage", "total"]

    costs = await client.get(
        "/api/v1/costs",
        params={
            "start": "2026-10-01T00:00:00Z",
            "end": "2026-11-01T00:00:00Z",
            "group_by": "project",
        },
        headers=alice.headers,
    )
    [storage] = costs.json()["storage"]
    assert storage["cost"] == expected and storage["gb_months"] == round(100 * 744 / 730, 6)
