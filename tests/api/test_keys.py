"""API keys: the secret is shown once and stored hashed; revocation and limit changes are
announced to the gateways; limits are validated."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis
from sqlmodel import select

from core.models import ApiKey
from core.redis_keys import API_KEY_CHANNEL
from core.tokens import token_hash
from tests.api.conftest import Tenant


async def _next_message(pubsub: Any) -> str:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        if message is not None:
            return str(message["data"])


async def test_create_shows_the_secret_once_and_stores_a_hash(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    body = {"project_id": str(alice.project.id), "name": "ci", "rpm_limit": 60, "tpm_limit": 5000}
    created = await client.post("/api/v1/keys", json=body, headers=alice.headers)
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["secret"]
    assert secret.startswith(key["prefix"]) and len(secret) > len(key["prefix"]) + 20
    assert (key["rpm_limit"], key["tpm_limit"], key["last_used_at"]) == (60, 5000, None)

    again = await client.get(f"/api/v1/keys/{key['id']}", headers=alice.headers)
    listed = await client.get("/api/v1/keys", headers=alice.headers)
    for response in (again, listed):
        assert secret not in response.text and "secret" not in response.text
    assert key["id"] in {k["id"] for k in listed.json()}
    async with sessionmaker() as session:
        row = (await session.exec(select(ApiKey).where(ApiKey.name == "ci"))).one()
    assert row.key_hash == token_hash(secret)
    assert secret not in row.model_dump_json()


async def test_revoke_and_limit_changes_reach_the_gateways(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, alice: Tenant
) -> None:
    key_id = alice.api_key_row.id
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(API_KEY_CHANNEL)
    try:
        patched = await client.patch(
            f"/api/v1/keys/{key_id}", json={"tpm_limit": 1000}, headers=alice.headers
        )
        assert patched.json()["tpm_limit"] == 1000
        assert await asyncio.wait_for(_next_message(pubsub), 10) == token_hash(alice.api_key)

        revoked = await client.delete(f"/api/v1/keys/{key_id}", headers=alice.headers)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert await asyncio.wait_for(_next_message(pubsub), 10) == token_hash(alice.api_key)
    finally:
        await pubsub.aclose()

    listed = (await client.get("/api/v1/keys", headers=alice.headers)).json()
    assert str(key_id) not in {k["id"] for k in listed}
    with_revoked = await client.get(
        "/api/v1/keys", params={"include_revoked": True}, headers=alice.headers
    )
    assert str(key_id) in {k["id"] for k in with_revoked.json()}
    late = await client.patch(
        f"/api/v1/keys/{key_id}", json={"rpm_limit": 5}, headers=alice.headers
    )
    assert late.status_code == 409


async def test_limits_are_validated(client: httpx.AsyncClient, alice: Tenant) -> None:
    base = {"project_id": str(alice.project.id), "name": "k"}
    for limits in ({"rpm_limit": 0}, {"tpm_limit": -5}, {"rpm_limit": 2**40}):
        response = await client.post("/api/v1/keys", json=base | limits, headers=alice.headers)
        assert response.status_code == 422, limits
    nul = await client.post(
        "/api/v1/keys", json=base | {"name": "bad\u0000name"}, headers=alice.headers
    )
    assert nul.status_code == 422 and "NUL" in nul.text
    cleared = await client.patch(
        f"/api/v1/keys/{alice.api_key_row.id}", json={"rpm_limit": None}, headers=alice.headers
    )
    assert cleared.status_code == 200 and cleared.json()["rpm_limit"] is None
    unnamed = await client.patch(
        f"/api/v1/keys/{alice.api_key_row.id}", json={"name": None}, headers=alice.headers
    )
    assert unnamed.status_code == 422 and "name cannot be null" in unnamed.text
