"""Stand-ins for the providers: moto's EC2 server (server mode, real HTTP on loopback) and a
local HTTP server speaking the Scaleway API's JSON."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer
from mypy_boto3_ec2 import EC2Client

from activities.providers.settings import AWSSettings, ScalewaySettings
from core.embedded import free_port
from tests.providers.fake_scaleway import FakeScaleway, serve

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def ec2(moto_endpoint: str) -> EC2Client:
    """A plain boto3 client on the stand-in, to look behind the adapter's back."""
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def aws_settings(moto_endpoint: str, ec2: EC2Client) -> AWSSettings:
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return AWSSettings(
        access_key_id="testing",
        secret_access_key="testing-secret",
        region=REGION,
        endpoint_url=moto_endpoint,
        ami_ids={"cpu-sim": ami, "nvidia-h100": ami},
        waiter_delay_s=1,
        waiter_max_attempts=10,
    )


@pytest.fixture
def fake_scaleway() -> Iterator[FakeScaleway]:
    fake = FakeScaleway(token=str(uuid.uuid4()))
    server = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scaleway_settings(fake_scaleway: FakeScaleway) -> ScalewaySettings:
    return ScalewaySettings(
        access_key="SCWXXXXXXXXXXXXXXXXX",
        secret_key=fake_scaleway.token,
        project_id=str(uuid.uuid4()),
        api_url=fake_scaleway.url,
        poll_interval_s=0.05,
        state_timeout_s=5,
    )
