"""Access that ends: a removed, disabled or deleted person's keys stop working on every gateway
within 5 s (unless reassigned first); sessions from before a password change answer 401; an open
event stream of a removed member ends with a last event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.events import EventKind, publish_event
from core.settings import Settings
from tests.agent.helpers import serving
from tests.api.conftest import Tenant, login
from tests.gateway.test_replicas import GatewayProcess, spawn_gateway  # noqa: F401 (fixture)

Spawn = Callable[..., Any]


async def create_key(client: httpx.AsyncClient, tenant: Tenant, name: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/keys",
        json={"project_id": str(tenant.project.id), "name": name},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def gateway_status(replica: GatewayProcess, secret: str) -> int:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {secret}"}) as client:
        return (await client.get(replica.url + "/v1/models")).status_code


async def refused_within(replicas: list[GatewayProcess], secret: str, seconds: float) -> float:
    """Seconds until every replica answers 401 for the key; fails past `seconds`."""
    began = time.monotonic()
    for replica in replicas:
        while (await gateway_status(replica, secret)) != 401:
            assert time.monotonic() - began < seconds, "key still accepted"
            await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_removed_members_keys_are_refused_by_two_gateways_within_5s(
    client: httpx.AsyncClient,
    spawn_gateway: Spawn,  # noqa: F811
    alice: Tenant,
    admin: Tenant,
) -> None:
    kept = await create_key(client, alice, "handed over")
    await client.put(
        f"/api/v1/projects/{alice.project.id}/members/{admin.user.id}", headers=admin.headers
    )
    handed = await client.post(
        "/api/v1/keys/reassign",
        json={"from_user_id": str(alice.user.id), "to_user_id": str(admin.user.id)},
        headers=admin.headers,
    )
    assert handed.json() == {"reassigned": 1}
    key = await create_key(client, alice, "alice's")  # created after the hand-over: still hers
    replicas = [await spawn_gateway(), await spawn_gateway()]
    for replica in replicas:
        assert await gateway_status(replica, key["secret"]) == 200
        assert await gateway_status(replica, kept["secret"]) == 200

    removed = await client.delete(
        f"/api/v1/projects/{alice.project.id}/members/{alice.user.id}", headers=admin.headers
    )
    assert removed.status_code == 204
    assert await refused_within(replicas, key["secret"], 5) < 5
    for replica in replicas:
        assert await gateway_status(replica, kept["secret"]) == 200
    listed = await client.get(
        "/api/v1/keys",
        params={"project_id": str(alice.project.id), "include_revoked": True},
        headers=admin.headers,
    )
    revoked = {k["name"]: k["revoked_at"] is not None for k in listed.json()}
    assert revoked["alice's"] and not revoked["handed over"]


async def test_reassigning_to_a_non_member_is_refused(
    client: httpx.AsyncClient, alice: Tenant, bob: Tenant, admin: Tenant
) -> None:
    await create_key(client, alice, "alice's")
    refused = await client.post(
        "/api/v1/keys/reassign",
        json={"from_user_id": str(alice.user.id), "to_user_id": str(bob.user.id)},
        headers=admin.headers,
    )
    assert refused.status_code == 409 and "not a member" in refused.json()["detail"]
    by_member = await client.post(
        "/api/v1/keys/reassign",
        json={"from_user_id": str(alice.user.id), "to_user_id": str(alice.user.id)},
        headers=alice.headers,
    )
    assert by_member.status_code == 403


@pytest.mark.parametrize("how", ["disable", "delete"])
async def test_disabled_or_deleted_users_keys_and_sessions_end(
    client: httpx.AsyncClient,
    spawn_gateway: Spawn,  # noqa: F811
    alice: Tenant,
    admin: Tenant,
    how: str,
) -> None:
    key = await create_key(client, alice, "alice's")
    replicas = [await spawn_gateway(), await spawn_gateway()]
    for replica in replicas:
        assert await gateway_status(replica, key["secret"]) == 200
    url = f"/api/v1/users/{alice.user.id}"
    if how == "disable":
        response = await client.patch(url, json={"is_active": False}, headers=admin.headers)
        assert response.status_code == 200
    else:
        assert (await client.delete(url, headers=admin.headers)).status_code == 204
    assert await refused_within(replicas, key["secret"], 5) < 5
    assert (await client.get("/api/v1/auth/me", headers=alice.headers)).status_code == 401
    if how == "disable":  # enabled again: the old session stays ended, a new login works
        await client.patch(url, json={"is_active": True}, headers=admin.headers)
        assert (await client.get("/api/v1/auth/me", headers=alice.headers)).status_code == 401
        await login(client, alice.user.email, alice.password)


async def test_sessions_from_before_a_password_change_answer_401(
    client: httpx.AsyncClient, alice: Tenant, admin: Tenant
) -> None:
    other_session = await login(client, alice.user.email, alice.password)
    change = {"current_password": alice.password, "new_password": "a-brand-new-password"}
    changed = await client.post("/api/v1/auth/password", json=change, headers=alice.headers)
    assert changed.status_code == 204
    for headers in (alice.headers, other_session):
        response = await client.get("/api/v1/auth/me", headers=headers)
        assert response.status_code == 401 and "password changed" in response.json()["detail"]
    fresh = await login(client, alice.user.email, "a-brand-new-password")
    assert (await client.get("/api/v1/auth/me", headers=fresh)).status_code == 200

    # An admin's reset ends the sessions too.
    reset = await client.patch(
        f"/api/v1/users/{alice.user.id}", json={"password": "reset-by-admin"}, headers=admin.headers
    )
    assert reset.status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=fresh)).status_code == 401
    await login(client, alice.user.email, "reset-by-admin")


@pytest.fixture
async def api_base(settings: Settings) -> AsyncIterator[str]:
    settings.sse_recheck_s = 1.0
    async with serving(create_app(settings, sse_keepalive_s=0.3)) as url:
        yield url


async def last_event(response: httpx.Response) -> dict[str, Any]:
    """Data events until the stream closes; the last one."""
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    assert events, "the stream closed without an event"
    return events[-1]


async def test_a_removed_members_event_stream_ends(
    api_base: str, client: httpx.AsyncClient, redis_client: Any, alice: Tenant, admin: Tenant
) -> None:
    assert Settings().sse_recheck_s <= 60  # the default re-checks at least once a minute
    async with (
        httpx.AsyncClient(base_url=api_base, timeout=30) as api,
        api.stream("GET", "/api/v1/events", headers=alice.headers) as response,
    ):
        assert response.status_code == 200
        await publish_event(redis_client, EventKind.instance, str(alice.project.id), {"n": 1})
        removed_at = time.monotonic()
        removed = await client.delete(
            f"/api/v1/projects/{alice.project.id}/members/{alice.user.id}", headers=admin.headers
        )
        assert removed.status_code == 204
        last = await asyncio.wait_for(last_event(response), 10)
    assert time.monotonic() - removed_at < 5  # re-checked every second here
    assert last["kind"] == "end" and "memberships changed" in last["data"]["reason"]


async def test_a_logged_out_event_stream_ends(api_base: str, alice: Tenant) -> None:
    async with httpx.AsyncClient(base_url=api_base, timeout=30) as api:
        async with api.stream("GET", "/api/v1/events", headers=alice.headers) as response:
            assert response.status_code == 200
            assert (await api.post("/api/v1/auth/logout", headers=alice.headers)).status_code == 204
            last = await asyncio.wait_for(last_event(response), 10)
    assert last["kind"] == "end" and "not authenticated" in last["data"]["reason"]
