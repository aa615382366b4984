"""AWS adapter against moto's EC2 server (server mode: real HTTP on loopback, plain boto3)."""

from __future__ import annotations

import base64
import logging
import uuid

import pytest
from mypy_boto3_ec2 import EC2Client

from activities.providers.aws.adapter import AWSCompute, map_client_error
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import (
    INSTANCE_TAG,
    CreateRequest,
    InvalidRequestError,
    NoCapacityError,
    TransientProviderError,
    VolumeSpec,
)
from tests.providers.teardown import delete_until_gone


def _request(**kwargs: object) -> CreateRequest:
    base: dict[str, object] = {
        "instance_id": str(uuid.uuid4()),
        "instance_type": "t3.medium",
        "model": "demo-llm",
        "served_name": "demo",
        "agent_env": {"INVENTIV_AGENT_TOKEN": "tok-secret", "WORKER_AGENT_SHA256": "ab" * 32},
    }
    return CreateRequest(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("InsufficientInstanceCapacity", 500, NoCapacityError),
        ("InstanceLimitExceeded", 400, NoCapacityError),
        ("VcpuLimitExceeded", 400, NoCapacityError),
        ("Unsupported", 400, NoCapacityError),
        ("InvalidAMIID.NotFound", 400, InvalidRequestError),
        ("InvalidParameterValue", 400, InvalidRequestError),
        ("UnauthorizedOperation", 403, InvalidRequestError),
        ("RequestLimitExceeded", 503, TransientProviderError),
        ("InternalError", 500, TransientProviderError),
        ("SomethingNew", 502, TransientProviderError),
    ],
)
def test_client_error_mapping(code: str, status: int, error: type[Exception]) -> None:
    mapped = map_client_error(code, "message from EC2", status)
    assert type(mapped) is error
    assert code in str(mapped) and "message from EC2" in str(mapped)
    assert mapped.retryable is (error is TransientProviderError)


async def test_tags_volumes_and_user_data(
    aws_settings: AWSSettings, ec2: EC2Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    compute = AWSCompute(aws_settings)
    request = _request(
        volumes=[
            VolumeSpec(size_gb=50),
            VolumeSpec(size_gb=20, delete_on_terminate=False, volume_type="gp2"),
        ]
    )
    created = await compute.create(request)
    raw = ec2.describe_instances(InstanceIds=[created.resource_id])["Reservations"][0]
    instance = raw["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[INSTANCE_TAG] == request.instance_id
    assert created.ip_address and created.agent_url == f"http://{created.ip_address}:8090"

    volumes = {v.size_gb: v for v in await compute.list_volumes(created.resource_id)}
    assert set(volumes) == {100, 50, 20}
    assert volumes[100].is_boot and volumes[100].delete_on_terminate
    assert volumes[50].delete_on_terminate and not volumes[50].is_boot
    assert not volumes[20].delete_on_terminate and volumes[20].volume_type == "gp2"
    for volume in ec2.describe_volumes(VolumeIds=[v.volume_id for v in volumes.values()])[
        "Volumes"
    ]:
        assert {"Key": INSTANCE_TAG, "Value": request.instance_id} in volume["Tags"]

    user_data = ec2.describe_instance_attribute(
        InstanceId=created.resource_id, Attribute="userData"
    )["UserData"]["Value"]
    text = base64.b64decode(user_data).decode()
    assert text.startswith("#cloud-config")
    assert "WORKER_AGENT_SHA256=" + "ab" * 32 in text
    assert "INVENTIV_AGENT_ENGINE_COMMAND='{python} -m agent.sim'" in text

    # Neither the agent's token nor the AWS secret reached a log line, even at DEBUG.
    assert "tok-secret" not in caplog.text and "testing-secret" not in caplog.text
    assert user_data not in caplog.text  # not even base64-encoded

    await delete_until_gone(compute, created.resource_id)
    remaining = ec2.describe_volumes(VolumeIds=[volumes[20].volume_id])["Volumes"]
    assert remaining[0]["State"] == "available"  # the persistent volume survives termination
    gone = [volumes[100].volume_id, volumes[50].volume_id]
    assert not [
        v for v in ec2.describe_volumes()["Volumes"] if v["VolumeId"] in gone
    ]  # DeleteOnTermination removed boot and data volumes
    await compute.delete_volume(volumes[20].volume_id)
    await compute.delete_volume(volumes[20].volume_id)  # idempotent
    assert not [
        v for v in await compute.list_tagged_volumes() if v.instance_id == request.instance_id
    ]


async def test_elastic_ip_attached_and_released(aws_settings: AWSSettings, ec2: EC2Client) -> None:
    compute = AWSCompute(aws_settings.model_copy(update={"elastic_ip": True}))
    request = _request()
    created = await compute.create(request)
    again = await compute.create(request)
    assert again.resource_id == created.resource_id
    filters = [{"Name": f"tag:{INSTANCE_TAG}", "Values": [request.instance_id]}]
    addresses = ec2.describe_addresses(Filters=filters)["Addresses"]  # type: ignore[arg-type]
    assert len(addresses) == 1  # the retried create reused the first address
    assert addresses[0]["InstanceId"] == created.resource_id
    assert again.ip_address == addresses[0]["PublicIp"]

    await delete_until_gone(compute, created.resource_id)
    assert await compute.release_ips(created.resource_id, request.instance_id) == [
        addresses[0]["PublicIp"]
    ]
    assert ec2.describe_addresses(Filters=filters)["Addresses"] == []  # type: ignore[arg-type]
    assert await compute.release_ips(created.resource_id, request.instance_id) == []


async def test_bad_requests_are_typed(aws_settings: AWSSettings) -> None:
    compute = AWSCompute(aws_settings)
    with pytest.raises(InvalidRequestError, match="flavor 'nvidia-h100' needs one of H100"):
        await compute.create(_request(flavor="nvidia-h100", instance_type="g6.xlarge"))
    with pytest.raises(InvalidRequestError, match="unknown flavor"):
        await compute.create(_request(flavor="tpu-v5"))
    no_ami = AWSCompute(aws_settings.model_copy(update={"ami_ids": {"cpu-sim": "ami-00000000"}}))
    with pytest.raises(InvalidRequestError, match="InvalidAMIID"):
        await no_ami.create(_request())
    assert await compute.get("i-0123456789abcdef0") is None
    await compute.delete("i-0123456789abcdef0")  # missing is success


def test_credentials_never_in_repr(aws_settings: AWSSettings) -> None:
    assert "testing-secret" not in repr(aws_settings) and "testing-secret" not in str(
        aws_settings.model_dump()
    )


async def test_instances_require_imdsv2_with_one_hop(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    """The user data holds the agent token: IMDSv1 would hand it (and the instance profile's
    credentials) to any plain GET on the machine, SSRF included."""
    compute = AWSCompute(aws_settings)
    created = await compute.create(_request())
    try:
        raw = ec2.describe_instances(InstanceIds=[created.resource_id])["Reservations"][0]
        options = raw["Instances"][0]["MetadataOptions"]
        assert options["HttpTokens"] == "required"
        assert options["HttpPutResponseHopLimit"] == 1
        assert options["HttpEndpoint"] == "enabled"
    finally:
        await delete_until_gone(compute, created.resource_id)


async def test_no_instance_without_a_security_group(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    """The engine and agent ports must not face the internet: no group, no instance."""
    compute = AWSCompute(aws_settings.model_copy(update={"security_group_ids": []}))
    with pytest.raises(InvalidRequestError, match="SECURITY_GROUP_IDS"):
        await compute.create(_request())
    reservations = ec2.describe_instances()["Reservations"]
    assert not [
        i for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"
    ]
