"""What EC2 does that moto does not, injected into the adapter's own boto3 client with botocore's
event hooks (moto's server stays the EC2 behind it): eventual consistency (NotFound right after
RunInstances and from TerminateInstances), capacity lost after launch, an AMI whose root snapshot
is larger than the configured root volume, and Nitro device names for data volumes."""

from __future__ import annotations

import base64
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from mypy_boto3_ec2 import EC2Client

from activities.providers.aws.adapter import AWSCompute, nitro_device
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import INSTANCE_TAG, CreateRequest, NoCapacityError, VolumeSpec
from tests.providers.conftest import IMAGES
from tests.providers.teardown import delete_until_gone

NOT_FOUND = {
    "Error": {"Code": "InvalidInstanceID.NotFound", "Message": "The instance ID does not exist"},
    "ResponseMetadata": {"HTTPStatusCode": 400},
}
CAPACITY = {
    "Code": "Server.InsufficientInstanceCapacity",
    "Message": "Server.InsufficientInstanceCapacity: Insufficient capacity.",
}


def _request(**kwargs: Any) -> CreateRequest:
    base: dict[str, Any] = {
        "instance_id": str(uuid.uuid4()),
        "instance_type": "t3.medium",
        "model": "demo-llm",
        "served_name": "demo",
    }
    return CreateRequest(**{**base, **kwargs})


class Hide:
    """Answer NotFound to the next `times` calls of `operation` that name an instance id."""

    def __init__(self, compute: AWSCompute, operation: str, times: int) -> None:
        self.left = times
        self.hidden = 0
        compute._ec2.meta.events.register(f"before-call.ec2.{operation}", self)

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> Any:
        if self.left > 0 and "InstanceId.1" in str(params.get("body", "")):
            self.left -= 1
            self.hidden += 1
            return SimpleNamespace(status_code=400), NOT_FOUND
        return None


async def test_a_new_instance_not_found_yet_is_waited_for(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings.model_copy(update={"not_found_window_s": 5}), IMAGES)
    hide = Hide(compute, "DescribeInstances", times=3)
    created = await compute.create(_request())
    assert hide.hidden == 3 and created.state == "running"  # not "gone"
    await delete_until_gone(compute, created.resource_id)


async def test_not_found_from_terminate_is_maybe_not_yet(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings.model_copy(update={"not_found_window_s": 5}), IMAGES)
    created = await compute.create(_request())
    hide = Hide(compute, "TerminateInstances", times=1)
    Hide(compute, "DescribeInstances", times=1)
    await compute.delete(created.resource_id)  # NotFound: looked again, found, terminated
    assert hide.hidden == 1
    state = ec2.describe_instances(InstanceIds=[created.resource_id])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
    await compute.confirm_gone(created.resource_id)


async def test_an_instance_never_found_counts_as_gone_after_the_window(
    aws_settings: AWSSettings,
) -> None:
    compute = AWSCompute(aws_settings.model_copy(update={"not_found_window_s": 1.5}), IMAGES)
    started = time.monotonic()
    assert await compute.get("i-0123456789abcdef0") is None
    assert 1 <= time.monotonic() - started < 4  # bounded
    await compute.delete("i-0123456789abcdef0")  # missing (after the same window) is success


class LoseCapacity:
    """EC2 terminating our instance while launching it: pending -> terminated, with its reason."""

    def __init__(self, compute: AWSCompute, ec2: EC2Client, instance_id: str) -> None:
        self.ec2, self.instance_id = ec2, instance_id
        compute._ec2.meta.events.register("after-call.ec2.DescribeInstances", self)

    def __call__(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        for reservation in parsed.get("Reservations", []):
            for raw in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                if tags.get(INSTANCE_TAG) != self.instance_id:
                    continue
                if raw["State"]["Name"] not in ("shutting-down", "terminated"):
                    self.ec2.terminate_instances(InstanceIds=[raw["InstanceId"]])
                raw["State"] = {"Code": 48, "Name": "terminated"}
                raw["StateReason"] = CAPACITY


async def test_capacity_lost_during_create_is_no_capacity_fast_and_leaves_nothing(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings, IMAGES)
    request = _request(volumes=[VolumeSpec(size_gb=30)])
    LoseCapacity(compute, ec2, request.instance_id)
    started = time.monotonic()
    with pytest.raises(NoCapacityError, match="Insufficient capacity") as info:
        await compute.create(request)
    assert time.monotonic() - started < 5 and info.value.retryable is False
    tag = [{"Name": f"tag:{INSTANCE_TAG}", "Values": [request.instance_id]}]
    live = [v for v in ec2.describe_volumes(Filters=tag)["Volumes"]]  # type: ignore[arg-type]
    assert live == []  # the data volume made for it was deleted


async def test_capacity_lost_after_create_is_no_capacity_not_gone(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings, IMAGES)
    request = _request()
    created = await compute.create(request)
    LoseCapacity(compute, ec2, request.instance_id)
    with pytest.raises(NoCapacityError, match=r"Server\.InsufficientInstanceCapacity"):
        await compute.get(created.resource_id)
    await compute.confirm_gone(created.resource_id)  # and teardown sees it gone


async def test_root_volume_respects_the_ami_snapshot(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings.model_copy(update={"root_volume_gb": 20}), IMAGES)

    def big_root(parsed: dict[str, Any], **kwargs: Any) -> None:
        for image in parsed.get("Images", []):
            for mapping in image.get("BlockDeviceMappings", []):
                if mapping.get("DeviceName") == image.get("RootDeviceName"):
                    mapping["Ebs"]["VolumeSize"] = 60

    compute._ec2.meta.events.register("after-call.ec2.DescribeImages", big_root)
    created = await compute.create(_request())
    [boot] = [v for v in created.volumes if v.is_boot]
    assert boot.size_gb == 60  # not 20: EC2 refuses a root volume smaller than its snapshot
    await delete_until_gone(compute, created.resource_id)


async def test_data_volumes_are_mounted_by_their_nitro_names_and_no_efa_without_an_interface(
    aws_settings: AWSSettings, ec2: EC2Client
) -> None:
    compute = AWSCompute(aws_settings, IMAGES)
    request = _request(
        instance_type="p5.48xlarge", flavor="nvidia-h100", volumes=[VolumeSpec(size_gb=200)]
    )
    created = await compute.create(request)
    [data] = [v for v in created.volumes if not v.is_boot]
    assert data.size_gb == 200 and data.delete_on_terminate
    user_data = base64.b64decode(
        ec2.describe_instance_attribute(InstanceId=created.resource_id, Attribute="userData")[
            "UserData"
        ]["Value"]
    ).decode()
    document = json.loads(user_data.split("\n", 1)[1])
    mount, run = (command[2] for command in document["runcmd"])
    device = nitro_device(data.volume_id)
    assert device.startswith("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol")
    assert f"mount {device} /mnt/models" in mount
    assert "-v /mnt/models:/mnt/models" in run and "--ipc host" in run
    env = document["write_files"][0]["content"]
    assert "INVENTIV_AGENT_MODEL_CACHE_DIR=/mnt/models" in env
    assert "NCCL_NET" not in env and "FI_PROVIDER" not in env  # no EFA interface, no EFA env
    await delete_until_gone(compute, created.resource_id)
    tag = [{"Name": f"tag:{INSTANCE_TAG}", "Values": [request.instance_id]}]
    assert ec2.describe_volumes(Filters=tag)["Volumes"] == []  # type: ignore[arg-type]
