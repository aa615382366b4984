"""The instance-type listing says where each price comes from."""

from __future__ import annotations

import httpx

from tests.api.conftest import Tenant

BASE = "/api/v1/providers"


async def test_price_source_follows_who_set_the_price(
    client: httpx.AsyncClient, admin: Tenant
) -> None:
    h = admin.headers
    provider = (await client.post(BASE, json={"name": "aws-1", "kind": "aws"}, headers=h)).json()
    types_url = f"{BASE}/{provider['id']}/instance-types"
    synced = (await client.post(f"{types_url}/sync", headers=h)).json()
    # AWS prices are the adapter's static table: there is no Pricing API reading (yet).
    assert {t["price_source"] for t in synced} == {"static"}
    p5 = next(t for t in synced if t["name"] == "p5.48xlarge")

    repriced = await client.patch(f"{types_url}/{p5['id']}", json={"price_per_hour": 40}, headers=h)
    assert repriced.json()["price_source"] == "manual"
    renamed_zones = await client.patch(
        f"{types_url}/{synced[0]['id']}", json={"zones": ["us-east-1a"]}, headers=h
    )
    assert renamed_zones.json()["price_source"] == "static"  # the price was not touched
    listed = {t["name"]: t for t in (await client.get(types_url, headers=h)).json()}
    assert listed["p5.48xlarge"]["price_source"] == "manual"

    made = await client.post(types_url, json={"name": "custom-1", "price_per_hour": 1.5}, headers=h)
    assert made.status_code == 201 and made.json()["price_source"] == "manual"
