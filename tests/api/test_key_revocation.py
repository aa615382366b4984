"""A key revoked through the API is refused by a running gateway within seconds, long before the
gateway's key cache would have expired on its own."""

from __future__ import annotations

import asyncio
import time

import httpx

from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.agent.helpers import serving
from tests.api.conftest import Tenant


async def test_revoked_key_is_refused_by_the_gateway(
    client: httpx.AsyncClient, settings: Settings, alice: Tenant
) -> None:
    assert settings.api_key_cache_ttl_s >= 30  # the cache alone would keep the key that long
    created = await client.post(
        "/api/v1/keys",
        json={"project_id": str(alice.project.id), "name": "to revoke"},
        headers=alice.headers,
    )
    key = created.json()
    async with (
        serving(create_gateway(settings)) as gateway_url,
        httpx.AsyncClient(
            base_url=gateway_url, headers={"Authorization": f"Bearer {key['secret']}"}
        ) as gateway,
    ):
        assert (await gateway.get("/v1/models")).status_code == 200  # now cached
        revoked = await client.delete(f"/api/v1/keys/{key['id']}", headers=alice.headers)
        assert revoked.status_code == 200
        deadline = time.monotonic() + 5
        while (status := (await gateway.get("/v1/models")).status_code) == 200:
            assert time.monotonic() < deadline, "the gateway still accepts the revoked key"
            await asyncio.sleep(0.1)
        assert status == 401
