"""Where each instance type's price comes from, as an admin meets it: the API's sync reads the
catalogue through a real worker (the API loads no cloud SDK), here with the AWS adapter pointed
at a stand-in of the Price List Query API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.catalogue import AWS_OFFERS
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import Compute
from api.app import create_app
from core.embedded import free_port
from core.settings import Settings
from tests.api.conftest import Tenant
from tests.providers.fake_aws_pricing import PRICES, FakePricing, running
from tests.workflows.helpers import running_worker
from workflows import client as workflows_client

BASE = "/api/v1/providers"
STATIC = {o.name: o.price_per_hour for o in AWS_OFFERS}


@pytest.fixture
def pricing() -> Iterator[FakePricing]:
    with running() as fake:
        yield fake


def aws(pricing_url: str, region: str = "eu-west-3") -> dict[str, Compute]:
    settings = AWSSettings(
        access_key_id="testing",
        secret_access_key="testing-secret",
        region=region,
        endpoint_url="http://127.0.0.1:9",  # EC2 is not asked by a sync
        pricing_endpoint_url=pricing_url,
    )
    return {"aws": AWSCompute(settings)}


async def _sync(client: httpx.AsyncClient, admin: Tenant, name: str) -> tuple[str, dict[str, Any]]:
    h = admin.headers
    provider = (await client.post(BASE, json={"name": name, "kind": "aws"}, headers=h)).json()
    types_url = f"{BASE}/{provider['id']}/instance-types"
    synced = await client.post(f"{types_url}/sync", headers=h)
    assert synced.status_code == 200, synced.text
    return types_url, {t["name"]: t for t in synced.json()}


async def test_live_prices_are_the_regions_and_manual_ones_survive(
    client: httpx.AsyncClient,
    admin: Tenant,
    settings: Settings,
    temporal_client: Client,
    pricing: FakePricing,
) -> None:
    h = admin.headers
    async with running_worker(settings, temporal_client, aws(pricing.url)):
        types_url, synced = await _sync(client, admin, "aws-paris")
        assert {n: t["price_per_hour"] for n, t in synced.items()} == PRICES["eu-west-3"]
        assert {t["price_source"] for t in synced.values()} == {"provider-api"}
        assert {t["currency"] for t in synced.values()} == {"USD"}
        assert synced["g5.xlarge"]["zones"] == ["eu-west-3"]

        p5, g5 = synced["p5.48xlarge"], synced["g5.xlarge"]
        repriced = await client.patch(
            f"{types_url}/{p5['id']}", json={"price_per_hour": 40}, headers=h
        )
        assert repriced.json()["price_source"] == "manual"
        rezoned = await client.patch(
            f"{types_url}/{g5['id']}", json={"zones": ["eu-west-3a"]}, headers=h
        )
        assert rezoned.json()["price_source"] == "provider-api"  # the price was not touched
        made = await client.post(
            types_url, json={"name": "custom-1", "price_per_hour": 1.5}, headers=h
        )
        assert made.status_code == 201 and made.json()["price_source"] == "manual"

        # AWS changes its prices; a second sync refreshes every price but the admin's.
        for name in pricing.prices["eu-west-3"]:
            pricing.prices["eu-west-3"][name] = round(pricing.prices["eu-west-3"][name] * 0.9, 4)
        resynced = {
            t["name"]: t for t in (await client.post(f"{types_url}/sync", headers=h)).json()
        }
    assert len(resynced) == len(synced) + 1  # nothing duplicated; custom-1 kept
    assert resynced["p5.48xlarge"]["price_per_hour"] == 40
    assert resynced["p5.48xlarge"]["price_source"] == "manual"
    assert resynced["custom-1"]["price_per_hour"] == 1.5
    assert resynced["g5.xlarge"]["price_per_hour"] == pricing.prices["eu-west-3"]["g5.xlarge"]
    assert resynced["g5.xlarge"]["zones"] == ["eu-west-3a"]  # only the price is refreshed
    for name in set(synced) - {"p5.48xlarge"}:
        assert resynced[name]["price_per_hour"] == pricing.prices["eu-west-3"][name]
        assert resynced[name]["price_source"] == "provider-api"
    listed = {t["name"]: t for t in (await client.get(types_url, headers=h)).json()}
    assert listed == resynced


async def test_throttled_types_fall_back_to_static_each(
    client: httpx.AsyncClient,
    admin: Tenant,
    settings: Settings,
    temporal_client: Client,
    pricing: FakePricing,
) -> None:
    pricing.throttle = {"g5.xlarge", "p4d.24xlarge"}
    async with running_worker(settings, temporal_client, aws(pricing.url)):
        types_url, synced = await _sync(client, admin, "aws-throttled")
        for name in ("g5.xlarge", "p4d.24xlarge"):
            assert (synced[name]["price_per_hour"], synced[name]["price_source"]) == (
                STATIC[name],
                "static",
            )
        for name in ("t3.medium", "g6.xlarge", "g6e.xlarge", "p5.48xlarge"):
            assert synced[name]["price_per_hour"] == PRICES["eu-west-3"][name]
            assert synced[name]["price_source"] == "provider-api"

        # The throttling ends: the static rows get the live price.
        pricing.throttle = set()
        again = {
            t["name"]: t
            for t in (await client.post(f"{types_url}/sync", headers=admin.headers)).json()
        }
        assert again["g5.xlarge"]["price_per_hour"] == PRICES["eu-west-3"]["g5.xlarge"]
        assert again["g5.xlarge"]["price_source"] == "provider-api"

        # Throttled again: a price read from AWS before is kept, not replaced by the table's.
        pricing.throttle = "*"
        kept = {
            t["name"]: t
            for t in (await client.post(f"{types_url}/sync", headers=admin.headers)).json()
        }
        assert kept == again


async def test_an_unreachable_pricing_api_gives_static_prices(
    client: httpx.AsyncClient, admin: Tenant, settings: Settings, temporal_client: Client
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with running_worker(settings, temporal_client, aws(closed)):
        _, synced = await _sync(client, admin, "aws-offline")
    assert {n: t["price_per_hour"] for n, t in synced.items()} == STATIC
    assert {t["price_source"] for t in synced.values()} == {"static"}


async def test_a_kind_off_in_the_worker_syncs_its_static_table(
    client: httpx.AsyncClient, admin: Tenant, settings: Settings, temporal_client: Client
) -> None:
    async with running_worker(settings, temporal_client, {}):  # no AWS credentials there
        _, synced = await _sync(client, admin, "aws-no-credentials")
    assert {n: t["price_per_hour"] for n, t in synced.items()} == STATIC
    assert {t["price_source"] for t in synced.values()} == {"static"}


async def test_no_worker_is_a_503_that_says_so(
    admin: Tenant, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflows_client, "CATALOGUE_TIMEOUT", timedelta(seconds=2))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            h = admin.headers
            made = await client.post(BASE, json={"name": "aws-alone", "kind": "aws"}, headers=h)
            types_url = f"{BASE}/{made.json()['id']}/instance-types"
            refused = await client.post(f"{types_url}/sync", headers=h)
            assert refused.status_code == 503
            assert refused.json()["dependency"] == "temporal"
            # within the short grace, not after the catalogue timeout: no worker polls
            assert "no worker is polling task queue" in refused.json()["detail"]
            assert settings.task_queue in refused.json()["detail"]
            assert refused.headers["Retry-After"]
            assert (await client.get(types_url, headers=h)).json() == []  # nothing written


async def test_a_worker_missing_from_temporals_poller_list_still_reads_the_catalogue(
    client: httpx.AsyncClient,
    admin: Tenant,
    settings: Settings,
    temporal_client: Client,
    pricing: FakePricing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Temporal lists the pollers of a task queue's root partition only; a worker whose polls sit
    on the others is missing from it (a sync right after another got a 503 that way, in CI).
    The answer must come from whether a worker takes the workflow, not from that list."""

    async def listed_no_poller(client: Client, task_queue: str) -> bool:
        return False

    monkeypatch.setattr(workflows_client, "_has_workers", listed_no_poller)
    async with running_worker(settings, temporal_client, aws(pricing.url)):
        _, synced = await _sync(client, admin, "aws-unlisted")
    assert {n: t["price_per_hour"] for n, t in synced.items()} == PRICES["eu-west-3"]
