"""Login, /me, logout (the token stops working), expiry, password change, throttling."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

import api.routers.auth
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
    logout = await client.post("/api/v1/auth/logout", headers={"X-Requested-With": "test"})
    assert logout.status_code == 204
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


def from_address(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://api.test")


async def test_concurrent_guesses_are_throttled_and_the_owner_still_logs_in(
    app: FastAPI, alice: Tenant, bob: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    verify = api.routers.auth.verify_password

    def counting_verify(password: str, hashed: str) -> bool:
        checked.append(password)
        return verify(password, hashed)

    monkeypatch.setattr(api.routers.auth, "verify_password", counting_verify)
    wrong = {"email": alice.user.email, "password": "guess"}
    async with from_address(app, "203.0.113.7") as attacker:
        answers = await asyncio.gather(
            *(attacker.post("/api/v1/auth/login", json=wrong) for _ in range(30))
        )
        statuses = sorted(r.status_code for r in answers)
        assert len(checked) <= 10
        assert statuses.count(401) == len(checked) and statuses.count(429) == 30 - len(checked)
        throttled = next(r for r in answers if r.status_code == 429)
        assert 1 <= int(throttled.headers["retry-after"]) <= 900
        assert "too many password attempts" in throttled.json()["detail"]

    async with from_address(app, "198.51.100.20") as owner:
        await login(owner, alice.user.email, alice.password)  # from elsewhere: at once
        await login(owner, bob.user.email, bob.password)


async def test_delays_grow_then_pass(app: FastAPI, alice: Tenant, settings: Settings) -> None:
    settings.login_free_attempts, settings.login_first_delay_s = 2, 3
    wrong = {"email": alice.user.email, "password": "guess"}
    async with from_address(app, "203.0.113.8") as client:
        for _ in range(2):
            assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
        throttled = await client.post("/api/v1/auth/login", json=wrong)
        assert throttled.status_code == 429 and 1 <= int(throttled.headers["retry-after"]) <= 3
        await asyncio.sleep(3.1)  # a delay, not a lock: the next try is heard
        assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
        second = await client.post("/api/v1/auth/login", json=wrong)
        assert second.status_code == 429 and 3 < int(second.headers["retry-after"]) <= 6


async def test_password_change_attempts_are_throttled(
    app: FastAPI, alice: Tenant, settings: Settings
) -> None:
    settings.login_first_delay_s = 60  # nothing gets through by waiting during the test
    change = {"current_password": "guess", "new_password": "a-new-password"}
    async with from_address(app, "203.0.113.9") as client:
        answers = await asyncio.gather(
            *(
                client.post("/api/v1/auth/password", json=change, headers=alice.headers)
                for _ in range(20)
            )
        )
    statuses = [r.status_code for r in answers]
    assert statuses.count(400) == settings.login_free_attempts
    assert statuses.count(429) == 20 - settings.login_free_attempts
