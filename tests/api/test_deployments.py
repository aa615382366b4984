"""Deployments: validation with precise messages, update, retire, autoscaling switch,
provisioning bounded by max_instances."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowExecutionStatus

from core.events import publish_event
from core.models import InstanceState, InstanceType, Provider
from core.redis_keys import EVENTS_STREAM
from tests.api.conftest import Tenant, add_instance


def body(t: Tenant, **overrides: Any) -> dict[str, Any]:
    values = {
        "project_id": str(t.project.id),
        "name": "chat",
        "model": "org/chat-model",
        "served_name": "chat",
        "provider_id": str(t.provider.id),
        "instance_type_id": str(t.instance_type.id),
        "min_instances": 1,
        "max_instances": 3,
        "engine_args": {"max-model-len": 4096, "enable-prefix-caching": True},
        "autoscaling": {"scale_up_queue_wait_s": 2, "scale_down_delay_s": 300},
    }
    return values | overrides


async def test_create_update_and_retire(
    client: httpx.AsyncClient, alice: Tenant, temporal_client: Client
) -> None:
    h = alice.headers
    created = await client.post("/api/v1/deployments", json=body(alice), headers=h)
    assert created.status_code == 201, created.text
    d = created.json()
    assert (d["served_name"], d["provider"], d["live_instances"]) == (
        "chat",
        alice.provider.name,
        0,
    )
    assert d["routing"] == "sticky_header"  # the default
    updated = await client.patch(
        f"/api/v1/deployments/{d['id']}",
        json={"max_instances": 5, "model": "org/v2", "routing": "least_load"},
        headers=h,
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["max_instances"], updated.json()["model"]) == (5, "org/v2")
    listed = await client.get("/api/v1/deployments", headers=h)
    assert [x["routing"] for x in listed.json() if x["id"] == d["id"]] == ["least_load"]

    started = await client.post(f"/api/v1/deployments/{d['id']}/autoscaling/start", headers=h)
    assert started.json()["autoscaling_enabled"] is True
    autoscaler = temporal_client.get_workflow_handle(f"autoscaler-{d['id']}")
    assert (await autoscaler.describe()).status == WorkflowExecutionStatus.RUNNING
    await autoscaler.terminate()  # no worker runs in this test
    stopped = await client.post(f"/api/v1/deployments/{d['id']}/autoscaling/stop", headers=h)
    assert stopped.json()["autoscaling_enabled"] is False

    assert (await client.delete(f"/api/v1/deployments/{d['id']}", headers=h)).status_code == 204
    listed = (await client.get("/api/v1/deployments", headers=h)).json()
    assert d["id"] not in {x["id"] for x in listed}
    kept = await client.get(f"/api/v1/deployments/{d['id']}", headers=h)
    assert kept.json()["deleted_at"] is not None
    # its served name is free again
    again = await client.post("/api/v1/deployments", json=body(alice), headers=h)
    assert again.status_code == 201
    gone = await client.patch(f"/api/v1/deployments/{d['id']}", json={"name": "x"}, headers=h)
    assert gone.status_code == 409


async def test_served_names_are_unique_per_project_even_when_created_at_once(
    client: httpx.AsyncClient, alice: Tenant, bob: Tenant
) -> None:
    # Another project's name is free here: keys resolve names within their own project.
    shared = await client.post(
        "/api/v1/deployments", json=body(alice, served_name="bob-model"), headers=alice.headers
    )
    assert shared.status_code == 201, shared.text
    # Two creations racing for one name: the database's unique index lets exactly one through.
    racing = await asyncio.gather(
        *(
            client.post(
                "/api/v1/deployments",
                json=body(alice, name=f"racer-{i}", served_name="contested"),
                headers=alice.headers,
            )
            for i in range(6)
        )
    )
    assert sorted(r.status_code for r in racing) == [201] + [409] * 5, [r.text for r in racing]


async def test_validation_messages(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, bob: Tenant
) -> None:
    async with sessionmaker() as session:
        other = Provider(name="other-provider", kind="local")
        session.add(other)
        await session.flush()
        foreign_type = InstanceType(provider_id=other.id, name="big")
        session.add(foreign_type)
        await session.commit()
    h = alice.headers
    cases = [
        (body(alice, min_instances=4, max_instances=2), 400, "min_instances (4) is above"),
        (body(alice, instance_type_id=str(foreign_type.id)), 400, "does not belong to provider"),
        (body(alice, provider_id=str(foreign_type.id)), 400, "not found"),
        (body(alice, flavor="quantum"), 400, "unknown flavor 'quantum'"),
        (body(alice, served_name="alice-model"), 409, "already used by another deployment"),
        (body(alice, engine_args=["--max-model-len", "4096"]), 422, "dict"),
        (body(alice, engine_args={"--max-model-len": 1}), 422, "is not a flag name"),
        (body(alice, engine_args={"x": {"nested": 1}}), 422, "a value is a string"),
        (body(alice, max_instances=-1), 422, "greater than or equal to 0"),
        (body(alice, model="has spaces"), 422, "pattern"),
        (body(alice, routing="header"), 422, "'sticky_header', 'sticky_user' or 'prefix_aware'"),
        (body(alice, session_affinity="none"), 422, "'none' is now 'least_load'"),
        # An invalid autoscaling policy is refused, naming the field, instead of being stored
        # and failing every autoscaler round.
        (body(alice, autoscaling={"scale_up_active_per_gpu": 0}), 422, "scale_up_active_per_gpu"),
        (body(alice, autoscaling={"window_s": "soon"}), 422, "window_s"),
        (body(alice, autoscaling={"target_rps_per_gpu": 0}), 422, "target_rps_per_gpu"),
        (body(alice, autoscaling={"target_utilization": 1.5}), 422, "target_utilization"),
        (
            body(alice, autoscaling={"target_prompt_tokens_per_gpu": 20_000}),
            422,
            "target_prompt_tokens_per_gpu and target_output_tokens_per_gpu go together",
        ),
        (body(alice, autoscaling={"target_in_flight_per_instance": 8}), 422, "Extra inputs"),
    ]
    for payload, code, message in cases:
        response = await client.post("/api/v1/deployments", json=payload, headers=h)
        assert response.status_code == code, (payload, response.text)
        assert message in response.text, (message, response.text)
    bad_patch = await client.patch(
        f"/api/v1/deployments/{alice.deployment.id}", json={"min_instances": 10}, headers=h
    )
    assert bad_patch.status_code == 400 and "above max_instances" in bad_patch.text
    null_patch = await client.patch(
        f"/api/v1/deployments/{alice.deployment.id}", json={"model": None}, headers=h
    )
    assert null_patch.status_code == 422 and "model cannot be null" in null_patch.text


async def test_live_instances_block_retirement_and_bound_provisioning(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    h = alice.headers
    dep = alice.deployment.id
    await client.patch(f"/api/v1/deployments/{dep}", json={"max_instances": 1}, headers=h)
    await add_instance(sessionmaker, alice, state=InstanceState.booting)
    refused = await client.delete(f"/api/v1/deployments/{dep}", headers=h)
    assert refused.status_code == 409 and "1 live instance" in refused.text
    full = await client.post(f"/api/v1/deployments/{dep}/instances", headers=h)
    assert full.status_code == 409 and "max_instances is 1" in full.text
    assert (await client.get(f"/api/v1/deployments/{dep}", headers=h)).json()["live_instances"] == 1


async def test_provision_returns_at_once_with_its_workflow_started(
    client: httpx.AsyncClient,
    redis_client: aioredis.Redis,
    temporal_client: Client,
    alice: Tenant,
) -> None:
    response = await client.post(
        f"/api/v1/deployments/{alice.deployment.id}/instances", headers=alice.headers
    )
    assert response.status_code == 202, response.text
    instance = response.json()
    assert (instance["state"], instance["progress"]) == ("provisioning", 0)
    handle = temporal_client.get_workflow_handle(instance["workflow_id"])
    try:
        described = await handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
    finally:
        await handle.terminate("test over")  # no worker runs in this test
    events = [json.loads(f["event"]) for _id, f in await redis_client.xrange(EVENTS_STREAM)]
    assert {"kind": "instance", "project_id": str(alice.project.id)}.items() <= events[-1].items()
    assert events[-1]["data"]["instance_id"] == instance["id"]


async def test_deployment_events_list_its_changes_newest_first(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, alice: Tenant, bob: Tenant
) -> None:
    dep = alice.deployment.id
    await client.post(f"/api/v1/deployments/{dep}/autoscaling/start", headers=alice.headers)
    await publish_event(  # as the autoscaler would
        redis_client, "scaling", str(alice.project.id),
        {"deployment_id": str(dep), "decision": "scale_up", "from": 1, "to": 2},
    )  # fmt: skip
    await client.post(
        f"/api/v1/deployments/{bob.deployment.id}/autoscaling/start", headers=bob.headers
    )
    for n in range(1500):  # newer unrelated events: the search pages back through the stream
        await publish_event(redis_client, "state", str(bob.project.id), {"n": n})
    events = await client.get(f"/api/v1/deployments/{dep}/events", headers=alice.headers)
    assert [
        (e["kind"], e["data"].get("decision") or e["data"]["change"]) for e in events.json()
    ] == [
        ("scaling", "scale_up"),
        ("deployment", "autoscaling started"),
    ]
    limited = await client.get(
        f"/api/v1/deployments/{dep}/events", params={"limit": 1}, headers=alice.headers
    )
    assert len(limited.json()) == 1


async def test_members_see_the_instance_types_they_can_deploy_on(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    async with sessionmaker() as session:
        off = Provider(name="switched-off", kind="local", enabled=False)
        session.add(off)
        await session.flush()
        session.add(InstanceType(provider_id=off.id, name="hidden"))
        await session.commit()
    choices = await client.get("/api/v1/deployments/instance-types", headers=alice.headers)
    assert choices.status_code == 200
    by_id = {c["id"]: c for c in choices.json()}
    mine = by_id[str(alice.instance_type.id)]
    assert (mine["provider"], mine["price_per_hour"]) == (alice.provider.name, 1.0)
    assert "hidden" not in {c["name"] for c in choices.json()}
