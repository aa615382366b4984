"""Usage from request logs and server costs from instance uptime, by day/key/model/deployment;
the spend rate; monthly statements in JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from core.models import InstanceState
from tests.api.conftest import Tenant, add_instance, add_request_logs, make_tenant


def at(day: int, hour: int, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
async def carol(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    """A tenant whose instance type costs 2.5 EUR per hour, with history around Oct/Nov."""
    t = await make_tenant(client, sessionmaker, model="carol-model", price_per_hour=2.5)
    await add_instance(  # 2 h in October, 1 h in November
        sessionmaker,
        t,
        state=InstanceState.terminated,
        created_at=at(31, 22),
        terminated_at=at(1, 1, month=11),
    )
    second = await client.post(
        "/api/v1/keys", json={"project_id": str(t.project.id), "name": "second"}, headers=t.headers
    )
    t.second_key_id = second.json()["id"]
    await add_request_logs(
        sessionmaker,
        t,
        {"at": at(31, 23), "model": "m1", "input_tokens": 100, "output_tokens": 10},
        {"at": at(1, 0, 30, month=11), "model": "m1", "input_tokens": 5, "output_tokens": 5,
         "status_code": 500},
        {"at": at(1, 0, 40, month=11), "model": "m2", "input_tokens": 7, "output_tokens": 3,
         "api_key_id": t.second_key_id},
    )  # fmt: skip
    return t


async def test_usage_by_day_key_and_model(client: httpx.AsyncClient, carol: Tenant) -> None:
    params = {"start": "2026-10-31T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    report = (await client.get("/api/v1/usage", params=params, headers=carol.headers)).json()
    assert (report["requests"], report["errors"]) == (3, 1)
    assert (report["input_tokens"], report["output_tokens"]) == (112, 18)
    rows = {(r["day"], r["api_key_name"], r["model"]): r for r in report["rows"]}
    assert set(rows) == {("2026-10-31", "test", "m1"), ("2026-11-01", "test", "m1"),
                         ("2026-11-01", "second", "m2")}  # fmt: skip
    assert rows[("2026-11-01", "test", "m1")]["errors"] == 1
    assert rows[("2026-11-01", "second", "m2")]["input_tokens"] == 7

    by_model = await client.get(
        "/api/v1/usage", params=params | {"group_by": "model"}, headers=carol.headers
    )
    assert {r["model"]: r["requests"] for r in by_model.json()["rows"]} == {"m1": 2, "m2": 1}
    assert by_model.json()["rows"][0]["day"] is None  # not grouped by day

    exported = await client.get("/api/v1/usage/export", params=params, headers=carol.headers)
    assert exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert sum(int(line["input_tokens"]) for line in lines) == 112

    backwards = await client.get(
        "/api/v1/usage", params={"start": params["end"], "end": params["start"]},
        headers=carol.headers,
    )  # fmt: skip
    assert backwards.status_code == 400 and "start must be before end" in backwards.text


async def test_costs_split_by_day_and_spend_rate(
    client: httpx.AsyncClient, sessionmaker: Any, carol: Tenant
) -> None:
    await add_instance(sessionmaker, carol, state=InstanceState.ready)  # running now
    params = {"start": "2026-10-31T00:00:00Z", "end": "2026-11-02T00:00:00Z", "group_by": "day"}
    report = (await client.get("/api/v1/costs", params=params, headers=carol.headers)).json()
    assert [(r["day"], r["instance_hours"], r["cost"]) for r in report["rows"]] == [
        ("2026-10-31", 2.0, 5.0),
        ("2026-11-01", 1.0, 2.5),
    ]
    assert report["totals"] == [{"currency": "EUR", "amount": 7.5}]
    assert report["spend_rate_per_hour"] == [{"currency": "EUR", "amount": 2.5}]

    by_deployment = await client.get(
        "/api/v1/costs", params=params | {"group_by": "deployment"}, headers=carol.headers
    )
    [row] = by_deployment.json()["rows"]
    assert row["deployment_name"] == carol.deployment.name and row["cost"] == 7.5


async def test_monthly_statement_json_and_csv(client: httpx.AsyncClient, carol: Tenant) -> None:
    url = f"/api/v1/projects/{carol.project.id}/statements/2026-10"
    statement = (await client.get(url, headers=carol.headers)).json()
    assert statement["project_name"] == carol.project.name
    [compute] = statement["compute"]
    assert (compute["instance_hours"], compute["cost"]) == (2.0, 5.0)
    [usage] = statement["usage"]
    assert (usage["model"], usage["requests"], usage["input_tokens"]) == ("m1", 1, 100)
    assert statement["totals"] == [{"currency": "EUR", "amount": 5.0}]

    exported = await client.get(url + "/csv", headers=carol.headers)
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["section"] for r in rows] == ["compute", "usage", "total"]
    assert rows[-1]["cost"] == "5.0"

    bad = await client.get(
        f"/api/v1/projects/{carol.project.id}/statements/2026-13", headers=carol.headers
    )
    assert bad.status_code == 400 and "not like 2026-11" in bad.text
