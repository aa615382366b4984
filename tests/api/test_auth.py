"""Login, /me, logout (the token stops working), expiry, password change."""

from __future__ import annotations

import httpx

from api.routers.auth import LOGIN_FAILURE_LIMIT
from api.security import create_access_token
from core.settings import Settings
from tests.api.conftest import Tenant, login


async def test_me_lists_the_users_projects(client: httpx.AsyncClient, alice: Tenant) -> None:
    me = (await client.get("/api/v1/auth/me", headers=alice.headers)).json()
    assert me["email"] == alice.user.email
    assert me["role"] == "member"
    assert [p["id"] for p in me["projects"]] == [str(alice.project.id)]


async def test_cookie_session_and_logout(client: httpx.AsyncClient, alice: Tenant) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"email": alice.user.email, "password": alice.password}
    )
    assert "httponly" in response.headers["set-cookie"].lower()
    assert (await client.get("/api/v1/auth/me")).status_code == 200  # the cookie alone
    token = response.json()["access_token"]
    assert (await client.post("/api/v1/auth/logout")).status_code == 204
    assert (await client.get("/api/v1/auth/me")).status_code == 401  # cookie cleared
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/auth/me", headers=bearer)).status_code == 401
    # other sessions of the same person go on
    assert (await client.get("/api/v1/auth/me", headers=alice.headers)).status_code == 200


async def test_expired_and_forged_tokens_are_refused(
    client: httpx.AsyncClient, alice: Tenant, settings: Settings
) -> None:
    expired = create_access_token(str(alice.user.id), settings.secret_key or "", -10)
    forged = create_access_token(str(alice.user.id), "not-the-key-" + "x" * 32, 3600)
    for token in (expired, forged, "garbage"):
        response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


async def test_wrong_password_and_password_change(client: httpx.AsyncClient, alice: Tenant) -> None:
    wrong = {"email": alice.user.email, "password": "nope"}
    assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
    change = {"current_password": "nope", "new_password": "a-new-password"}
    response = await client.post("/api/v1/auth/password", json=change, headers=alice.headers)
    assert response.status_code == 400
    change["current_password"] = alice.password
    response = await client.post("/api/v1/auth/password", json=change, headers=alice.headers)
    assert response.status_code == 204
    await login(client, alice.user.email, "a-new-password")


async def test_repeated_wrong_passwords_lock_the_email_for_a_while(
    client: httpx.AsyncClient, alice: Tenant, bob: Tenant
) -> None:
    wrong = {"email": alice.user.email, "password": "guess"}
    for _ in range(LOGIN_FAILURE_LIMIT):
        assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
    locked = await client.post(
        "/api/v1/auth/login", json={"email": alice.user.email, "password": alice.password}
    )
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 60
    assert "too many failed logins" in locked.json()["detail"]
    await login(client, bob.user.email, bob.password)  # others are not affected
