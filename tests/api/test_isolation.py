"""A member of project A can neither read nor change anything of project B: instances,
deployments, keys, usage, costs, statements, metrics (events: see test_events.py)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import Tenant, add_instance, add_request_logs


async def test_member_cannot_reach_another_project(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant, bob: Tenant
) -> None:
    mine = await add_instance(sessionmaker, alice)
    theirs = await add_instance(sessionmaker, bob)
    await add_request_logs(sessionmaker, alice, {"input_tokens": 1})
    await add_request_logs(sessionmaker, bob, {"input_tokens": 1000})
    h = alice.headers
    b_project, b_deployment, b_key = bob.project.id, bob.deployment.id, bob.api_key_row.id

    # Lists only show Alice's things.
    listed = (await client.get("/api/v1/instances", headers=h)).json()
    assert [i["id"] for i in listed["items"]] == [str(mine.id)]
    assert [d["id"] for d in (await client.get("/api/v1/deployments", headers=h)).json()] == [
        str(alice.deployment.id)
    ]
    assert [k["id"] for k in (await client.get("/api/v1/keys", headers=h)).json()] == [
        str(alice.api_key_row.id)
    ]
    assert [p["id"] for p in (await client.get("/api/v1/projects", headers=h)).json()] == [
        str(alice.project.id)
    ]
    usage = (await client.get("/api/v1/usage", headers=h)).json()
    assert usage["input_tokens"] == 1
    costs = (await client.get("/api/v1/costs", params={"group_by": "project"}, headers=h)).json()
    assert {r["project_id"] for r in costs["rows"]} == {str(alice.project.id)}
    overview = (await client.get("/api/v1/overview", headers=h)).json()
    assert overview["instances_by_state"]["ready"] == 1

    # Bob's things, addressed directly, do not exist for Alice (404, existence not disclosed).
    forbidden = [
        ("GET", f"/api/v1/instances/{theirs.id}", None),
        ("POST", f"/api/v1/instances/{theirs.id}/drain", None),
        ("DELETE", f"/api/v1/instances/{theirs.id}", None),
        ("GET", f"/api/v1/deployments/{b_deployment}", None),
        ("PATCH", f"/api/v1/deployments/{b_deployment}", {"max_instances": 9}),
        ("DELETE", f"/api/v1/deployments/{b_deployment}", None),
        ("POST", f"/api/v1/deployments/{b_deployment}/instances", None),
        ("POST", f"/api/v1/deployments/{b_deployment}/autoscaling/start", None),
        ("GET", f"/api/v1/keys/{b_key}", None),
        ("PATCH", f"/api/v1/keys/{b_key}", {"rpm_limit": 1}),
        ("DELETE", f"/api/v1/keys/{b_key}", None),
        ("POST", "/api/v1/keys", {"project_id": str(b_project), "name": "steal"}),
        ("GET", f"/api/v1/keys?project_id={b_project}", None),
        ("GET", f"/api/v1/projects/{b_project}", None),
        ("GET", f"/api/v1/projects/{b_project}/members", None),
        ("GET", f"/api/v1/usage?project_id={b_project}", None),
        ("GET", f"/api/v1/usage/export?project_id={b_project}", None),
        ("GET", f"/api/v1/costs?project_id={b_project}", None),
        ("GET", f"/api/v1/overview?project_id={b_project}", None),
        ("GET", f"/api/v1/projects/{b_project}/statements/2026-11", None),
        ("GET", f"/api/v1/projects/{b_project}/statements/2026-11/csv", None),
        ("GET", f"/api/v1/metrics/requests?deployment_id={b_deployment}", None),
        ("GET", f"/api/v1/metrics/gpu?instance_id={theirs.id}", None),
        ("GET", f"/api/v1/instances?project_id={b_project}", None),
    ]
    for method, url, body in forbidden:
        response = await client.request(method, url, json=body, headers=h)
        if url.startswith("/api/v1/instances?"):
            assert response.json()["items"] == [], url  # a filter, not an address
            continue
        assert response.status_code == 404, (method, url, response.status_code, response.text)
        assert str(b_project) not in response.text

    # Nothing of Bob's changed.
    bob_view = await client.get(f"/api/v1/deployments/{b_deployment}", headers=bob.headers)
    assert bob_view.json()["max_instances"] == 4
    assert bob_view.json()["autoscaling_enabled"] is False
    key = (await client.get(f"/api/v1/keys/{b_key}", headers=bob.headers)).json()
    assert key["revoked_at"] is None and key["rpm_limit"] is None
    instance = (await client.get(f"/api/v1/instances/{theirs.id}", headers=bob.headers)).json()
    assert instance["state"] == "ready"


async def test_members_cannot_administer(
    client: httpx.AsyncClient, alice: Tenant, bob: Tenant
) -> None:
    h = alice.headers
    attempts = [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"email": "x@example.com", "password": "long-enough"}),
        ("PATCH", f"/api/v1/users/{alice.user.id}", {"role": "admin"}),
        ("POST", "/api/v1/projects", {"name": "mine"}),
        ("PUT", f"/api/v1/projects/{bob.project.id}/members/{alice.user.id}", None),
        ("DELETE", f"/api/v1/projects/{alice.project.id}", None),
    ]
    for method, url, body in attempts:
        response = await client.request(method, url, json=body, headers=h)
        assert response.status_code == 403, (method, url, response.text)
    me = (await client.get("/api/v1/auth/me", headers=h)).json()
    assert me["role"] == "member" and len(me["projects"]) == 1


async def test_admin_manages_users_and_membership(
    client: httpx.AsyncClient, admin: Tenant, bob: Tenant
) -> None:
    h = admin.headers
    created = await client.post(
        "/api/v1/users",
        json={"email": "Carol@Example.com", "password": "carol-password", "full_name": "Carol"},
        headers=h,
    )
    assert created.status_code == 201, created.text
    carol = created.json()
    assert carol["email"] == "carol@example.com" and carol["role"] == "member"
    assert "password" not in created.text and "hashed" not in created.text
    again = await client.post(
        "/api/v1/users", json={"email": "carol@example.com", "password": "whatever1"}, headers=h
    )
    assert again.status_code == 409
    short = await client.post(
        "/api/v1/users", json={"email": "dan@example.com", "password": "short"}, headers=h
    )
    assert short.status_code == 422

    # Carol joins Bob's project and sees exactly it.
    added = await client.put(f"/api/v1/projects/{bob.project.id}/members/{carol['id']}", headers=h)
    assert added.status_code == 200
    login = await client.post(
        "/api/v1/auth/login", json={"email": "carol@example.com", "password": "carol-password"}
    )
    client.cookies.clear()
    ch = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert [d["id"] for d in (await client.get("/api/v1/deployments", headers=ch)).json()] == [
        str(bob.deployment.id)
    ]
    # Removed from it, she sees nothing; disabled, she cannot log in any more.
    removed = await client.delete(
        f"/api/v1/projects/{bob.project.id}/members/{carol['id']}", headers=h
    )
    assert removed.status_code == 204
    assert (await client.get("/api/v1/deployments", headers=ch)).json() == []
    disabled = await client.patch(
        f"/api/v1/users/{carol['id']}", json={"is_active": False}, headers=h
    )
    assert disabled.status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=ch)).status_code == 401
    # An admin cannot lock themselves out.
    me = await client.patch(f"/api/v1/users/{admin.user.id}", json={"role": "member"}, headers=h)
    assert me.status_code == 409
