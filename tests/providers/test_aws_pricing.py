"""AWS live prices: the adapter's real boto3 `pricing` client against a stand-in of the Price List
Query API (tests/providers/fake_aws_pricing.py), with the static table as the per-type fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from activities.providers.aws.adapter import AWSCompute, on_demand_hourly_usd
from activities.providers.aws.catalogue import AWS_OFFERS
from activities.providers.aws.settings import AWSSettings
from core.embedded import free_port
from tests.providers.fake_aws_pricing import PRICES, FakePricing, running

STATIC = {o.name: o.price_per_hour for o in AWS_OFFERS}


@pytest.fixture
def pricing() -> Iterator[FakePricing]:
    with running() as fake:
        yield fake


def _settings(pricing_url: str, **kwargs: object) -> AWSSettings:
    return AWSSettings(
        access_key_id="testing",
        secret_access_key="testing-secret",
        endpoint_url="http://127.0.0.1:9",  # EC2 is not asked here
        pricing_endpoint_url=pricing_url,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
async def test_prices_are_the_regions_own(pricing: FakePricing, region: str) -> None:
    compute = AWSCompute(_settings(pricing.url, region=region, pricing_region="eu-central-1"))
    offers = {o.name: o for o in await compute.live_catalogue()}
    assert {n: o.price_per_hour for n, o in offers.items()} == PRICES[region]
    assert {o.price_source for o in offers.values()} == {"provider-api"}
    assert {o.currency for o in offers.values()} == {"USD"}  # as the static table
    assert all(o.zones == [region] for o in offers.values())
    # Specs stay the table's; only the price is read.
    assert offers["p5.48xlarge"].gpu_count == 8 and offers["p5.48xlarge"].gpu_model == "H100"
    call = pricing.calls[0]
    assert call.target == "AWSPriceListService.GetProducts"
    assert call.signing_region == "eu-central-1"  # the Price List endpoint's region
    assert call.body["ServiceCode"] == "AmazonEC2"
    assert call.filters() == {
        "instanceType": "t3.medium",
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    await compute.close()


async def test_pages_are_followed(pricing: FakePricing) -> None:
    pricing.page_size = 1
    pricing.reserved_only_first = {"g5.xlarge"}  # its first match has no on-demand term
    compute = AWSCompute(_settings(pricing.url, region="eu-west-3"))
    offers = {o.name: o for o in await compute.live_catalogue()}
    assert offers["g5.xlarge"].price_per_hour == PRICES["eu-west-3"]["g5.xlarge"]
    assert offers["g5.xlarge"].price_source == "provider-api"
    g5 = [c for c in pricing.calls if c.filters().get("instanceType") == "g5.xlarge"]
    assert len(g5) == 2 and "NextToken" in g5[1].body


async def test_a_throttled_type_keeps_its_static_price(pricing: FakePricing) -> None:
    pricing.throttle = {"g5.xlarge", "p5.48xlarge"}
    compute = AWSCompute(_settings(pricing.url, region="eu-west-3"))
    offers = {o.name: o for o in await compute.live_catalogue()}
    for name in ("g5.xlarge", "p5.48xlarge"):
        assert (offers[name].price_per_hour, offers[name].price_source) == (STATIC[name], "static")
    for name in ("t3.medium", "g6.xlarge", "g6e.xlarge", "p4d.24xlarge"):
        assert offers[name].price_per_hour == PRICES["eu-west-3"][name]
        assert offers[name].price_source == "provider-api"


async def test_an_unreachable_api_gives_the_static_table() -> None:
    compute = AWSCompute(_settings(f"http://127.0.0.1:{free_port()}", region="eu-west-3"))
    offers = await compute.live_catalogue()
    assert [(o.name, o.price_per_hour, o.price_source) for o in offers] == [
        (o.name, o.price_per_hour, "static") for o in AWS_OFFERS
    ]
    assert all(o.zones == ["eu-west-3"] for o in offers)


async def test_a_type_aws_does_not_list_keeps_its_static_price(pricing: FakePricing) -> None:
    del pricing.prices["eu-west-3"]["p4d.24xlarge"]  # not offered in that region
    compute = AWSCompute(_settings(pricing.url, region="eu-west-3"))
    offers = {o.name: o for o in await compute.live_catalogue()}
    assert offers["p4d.24xlarge"].price_source == "static"
    assert offers["p4d.24xlarge"].price_per_hour == STATIC["p4d.24xlarge"]
    assert offers["t3.medium"].price_source == "provider-api"


def test_on_demand_price_parsing() -> None:
    def entry(unit: str, usd: str) -> str:
        dimension = {"unit": unit, "pricePerUnit": {"USD": usd}}
        return json.dumps(
            {"terms": {"OnDemand": {"A.B": {"priceDimensions": {"A.B.C": dimension}}}}}
        )

    assert on_demand_hourly_usd(entry("Hrs", "1.0060000000")) == 1.006
    assert on_demand_hourly_usd(json.loads(entry("Hrs", "0.5"))) == 0.5  # already parsed
    assert on_demand_hourly_usd(entry("Hrs", "0.0000000000")) is None  # a reservation's row
    assert on_demand_hourly_usd(entry("Quantity", "12")) is None
    assert on_demand_hourly_usd(json.dumps({"terms": {"Reserved": {}}})) is None
