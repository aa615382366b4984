"""AWS EC2 adapter (boto3).

Every instance, EBS volume and Elastic IP carries `inventiv-instance-id` and `inventiv-managed`
tags; `RunInstances` also gets the instance id as `ClientToken`, so EC2 itself dedupes a retried
create, and a lookup by tag finds what a crashed first try made. Volumes get `DeleteOnTermination`
as each `VolumeSpec` asks. `delete` asks EC2 to terminate and returns: termination takes a minute
or more, and whoever needs it finished polls `get`. boto3 is blocking: every call runs through
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from activities.providers.aws.catalogue import AWS_OFFERS, MACHINE_IMAGES, offers
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import (
    AGENT_PORT,
    ENGINE_PORT,
    INSTANCE_TAG,
    MANAGED_TAG,
    Compute,
    CreateRequest,
    InstanceOffer,
    InvalidRequestError,
    NoCapacityError,
    ProviderError,
    ProviderInstance,
    ProviderVolume,
    PublicIPMixin,
    TransientProviderError,
    VolumesMixin,
)
from activities.providers.cloud_init import render_user_data
from activities.providers.flavors import agent_environment, get_flavor

# Types with Elastic Fabric Adapter: NCCL goes over libfabric's EFA provider.
EFA_TYPES = frozenset({"p4d.24xlarge", "p5.48xlarge"})
EFA_ENV = {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "NCCL_NET": "ofi"}

# io1/io2 volumes need an explicit IOPS figure; this one is within both types' limits.
PROVISIONED_IOPS_TYPES = frozenset({"io1", "io2"})
PROVISIONED_IOPS = 3000

_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientAddressCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "AddressLimitExceeded",
        "VolumeLimitExceeded",
        "Unsupported",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "IncorrectState",
        "IncorrectInstanceState",
        "VolumeInUse",
        "DependencyViolation",
        "InvalidInstanceID.NotFound",  # eventual consistency right after RunInstances
    }
)
_NOT_FOUND_CODES = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidInstanceID.Malformed",
        "InvalidVolume.NotFound",
        "InvalidAllocationID.NotFound",
        "InvalidAssociationID.NotFound",
    }
)


def map_client_error(code: str, message: str, status: int) -> ProviderError:
    """A typed error for an EC2 error code (pure: unit-tested without EC2)."""
    text = f"EC2 {code}: {message}"
    if code in _CAPACITY_CODES:
        return NoCapacityError(text)
    if code in _TRANSIENT_CODES or status >= 500:
        return TransientProviderError(text)
    return InvalidRequestError(text)


def _tags(instance_id: str) -> list[dict[str, str]]:
    return [{"Key": INSTANCE_TAG, "Value": instance_id}, {"Key": MANAGED_TAG, "Value": "true"}]


def _tag(resource: Mapping[str, Any], key: str) -> str | None:
    for tag in resource.get("Tags", []):
        if tag["Key"] == key:
            return str(tag["Value"])
    return None


_STATES = {
    "pending": "pending",
    "running": "running",
    "stopping": "stopped",
    "stopped": "stopped",
    "shutting-down": "terminated",
}
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]


class AWSCompute(VolumesMixin, PublicIPMixin, Compute):
    kind = "aws"

    def __init__(self, settings: AWSSettings) -> None:
        self.settings = settings
        # botocore logs request parameters at DEBUG, and user data holds the agent's token.
        sdk_log = logging.getLogger("botocore")
        if sdk_log.getEffectiveLevel() < logging.INFO:
            sdk_log.setLevel(logging.INFO)

        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        self._ec2 = boto3.client(
            "ec2",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=secret(settings.access_key_id),
            aws_secret_access_key=secret(settings.secret_access_key),
            aws_session_token=secret(settings.session_token),
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    # ------------------------------------------------------------------ plumbing

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await asyncio.to_thread(getattr(self._ec2, method), **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
            raise map_client_error(
                error.get("Code", "Unknown"), error.get("Message", ""), int(status)
            ) from exc
        except BotoCoreError as exc:  # connection errors, timeouts
            raise TransientProviderError(f"EC2 unreachable: {exc}") from exc
        return result

    async def _call_or_none(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        """Like `_call`, but a missing resource is None."""
        try:
            return await asyncio.to_thread(getattr(self._ec2, method), **kwargs)  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                return None
            return await self._call(method, **kwargs)  # re-raise through the mapping

    async def _wait(self, waiter: str, **kwargs: Any) -> None:
        config = {
            "Delay": self.settings.waiter_delay_s,
            "MaxAttempts": self.settings.waiter_max_attempts,
        }
        try:
            await asyncio.to_thread(
                self._ec2.get_waiter(waiter).wait,  # type: ignore[call-overload]
                WaiterConfig=config,
                **kwargs,
            )
        except WaiterError as exc:
            raise TransientProviderError(f"EC2 {waiter} not reached: {exc}") from exc

    async def _instances(self, **kwargs: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._call_or_none(
                "describe_instances", **kwargs, **({"NextToken": token} if token else {})
            )
            if page is None:
                return found
            for reservation in page.get("Reservations", []):
                found.extend(reservation.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return found

    # ------------------------------------------------------------------ catalogue

    def catalogue(self) -> list[InstanceOffer]:
        return offers(self.settings)

    async def _image(self, flavor_name: str) -> dict[str, Any]:
        flavor = get_flavor(flavor_name)
        ami = self.settings.ami_ids.get(flavor.name)
        if ami:
            images = (await self._call("describe_images", ImageIds=[ami]))["Images"]
        else:
            owner, _, pattern = flavor.machine_image(MACHINE_IMAGES, self.kind).partition(":")
            images = (
                await self._call(
                    "describe_images",
                    Owners=[owner],
                    Filters=[
                        {"Name": "name", "Values": [pattern]},
                        {"Name": "state", "Values": ["available"]},
                    ],
                )
            )["Images"]
        if not images:
            raise InvalidRequestError(
                f"no AMI for flavor {flavor.name!r} in {self.settings.region}; "
                "set INVENTIV_AWS_AMI_IDS"
            )
        return max(images, key=lambda image: image.get("CreationDate", ""))

    # ------------------------------------------------------------------ instances

    def _to_instance(self, raw: Mapping[str, Any]) -> ProviderInstance:
        address = "PrivateIpAddress" if self.settings.use_private_ip else "PublicIpAddress"
        ip = raw.get(address) if raw["State"]["Name"] == "running" else None
        return ProviderInstance(
            resource_id=raw["InstanceId"],
            instance_id=_tag(raw, INSTANCE_TAG) or "",
            state=_STATES.get(raw["State"]["Name"], "terminated"),
            ip_address=ip,
            private_ip=raw.get("PrivateIpAddress"),
            zone=raw.get("Placement", {}).get("AvailabilityZone"),
            agent_url=f"http://{ip}:{AGENT_PORT}" if ip else None,
            engine_url=f"http://{ip}:{ENGINE_PORT}" if ip else None,
            created_at=raw.get("LaunchTime"),
            extra={"instance_type": raw.get("InstanceType")},
        )

    async def _find(self, instance_id: str) -> dict[str, Any] | None:
        found = await self._instances(
            Filters=[
                {"Name": f"tag:{INSTANCE_TAG}", "Values": [instance_id]},
                {"Name": "instance-state-name", "Values": _LIVE_STATES},
            ]
        )
        return found[0] if found else None

    def _provider_env(self, request: CreateRequest) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.settings.model_s3_prefix:
            env["INVENTIV_AGENT_MODEL_S3_PREFIX"] = self.settings.model_s3_prefix
        if request.instance_type in EFA_TYPES:
            env.update(EFA_ENV)
        return env

    async def create(self, request: CreateRequest) -> ProviderInstance:
        raw = await self._find(request.instance_id)
        if raw is None:
            raw = await self._run(request)
        if self.settings.elastic_ip:
            await self._attach_elastic_ip(raw["InstanceId"], request.instance_id)
        instance = await self.get(raw["InstanceId"]) or self._to_instance(raw)
        instance.volumes = await self.list_volumes(instance.resource_id)
        return instance

    async def _run(self, request: CreateRequest) -> dict[str, Any]:
        flavor = get_flavor(request.flavor)
        offer = next((o for o in AWS_OFFERS if o.name == request.instance_type), None)
        if offer is not None:
            flavor.check_offer(offer)
        image = await self._image(flavor.name)
        env = agent_environment(request, provider_env=self._provider_env(request))
        mappings: list[dict[str, Any]] = [
            {
                "DeviceName": image.get("RootDeviceName", "/dev/sda1"),
                "Ebs": {
                    "VolumeSize": self.settings.root_volume_gb,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ]
        for index, volume in enumerate(request.volumes):
            ebs: dict[str, Any] = {
                "VolumeSize": max(1, round(volume.size_gb)),
                "VolumeType": volume.volume_type if volume.volume_type != "data" else "gp3",
                "DeleteOnTermination": volume.delete_on_terminate,
            }
            if ebs["VolumeType"] in PROVISIONED_IOPS_TYPES:
                ebs["Iops"] = PROVISIONED_IOPS
            mappings.append({"DeviceName": f"/dev/sd{chr(ord('f') + index)}", "Ebs": ebs})
        tags = _tags(request.instance_id)
        kwargs: dict[str, Any] = {
            "ImageId": image["ImageId"],
            "InstanceType": request.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": request.instance_id[:64],
            "UserData": render_user_data(
                env, engine_image=flavor.engine_image, accelerator=flavor.accelerator
            ),
            "BlockDeviceMappings": mappings,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [*tags, {"Key": "Name", "Value": f"inventiv-{request.instance_id}"}],
                },
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if request.zone:
            kwargs["Placement"] = {"AvailabilityZone": request.zone}
        if self.settings.subnet_id:
            kwargs["SubnetId"] = self.settings.subnet_id
        if self.settings.security_group_ids:
            kwargs["SecurityGroupIds"] = self.settings.security_group_ids
        if self.settings.key_name:
            kwargs["KeyName"] = self.settings.key_name
        if self.settings.iam_instance_profile:
            kwargs["IamInstanceProfile"] = {"Name": self.settings.iam_instance_profile}
        result = await self._call("run_instances", **kwargs)
        return result["Instances"][0]  # type: ignore[no-any-return]

    async def _attach_elastic_ip(self, resource_id: str, instance_id: str) -> None:
        addresses = await self._addresses(instance_id)
        if addresses and addresses[0].get("InstanceId") == resource_id:
            return
        if addresses:
            allocation = addresses[0]["AllocationId"]
        else:
            allocation = (
                await self._call(
                    "allocate_address",
                    Domain="vpc",
                    TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": _tags(instance_id)}],
                )
            )["AllocationId"]
        await self._wait("instance_running", InstanceIds=[resource_id])
        await self._call("associate_address", AllocationId=allocation, InstanceId=resource_id)

    async def start(self, resource_id: str) -> None:
        instance = await self.get(resource_id)
        if instance is None:
            raise InvalidRequestError(f"EC2 instance {resource_id} does not exist")
        if instance.state == "stopped":
            await self._call("start_instances", InstanceIds=[resource_id])

    async def get(self, resource_id: str) -> ProviderInstance | None:
        found = await self._instances(InstanceIds=[resource_id])
        if not found or found[0]["State"]["Name"] == "terminated":
            return None
        return self._to_instance(found[0])

    async def delete(self, resource_id: str) -> None:
        await self._call_or_none("terminate_instances", InstanceIds=[resource_id])

    async def list_tagged(self) -> list[ProviderInstance]:
        found = await self._instances(
            Filters=[
                {"Name": "tag-key", "Values": [MANAGED_TAG]},
                {"Name": "instance-state-name", "Values": [*_LIVE_STATES, "shutting-down"]},
            ]
        )
        return [self._to_instance(raw) for raw in found]

    # ------------------------------------------------------------------ volumes

    @staticmethod
    def _to_volume(
        raw: Mapping[str, Any], is_boot: bool, delete_on_terminate: bool
    ) -> ProviderVolume:
        return ProviderVolume(
            volume_id=raw["VolumeId"],
            volume_type=raw.get("VolumeType", "gp3"),
            size_gb=float(raw.get("Size", 0)),
            is_boot=is_boot,
            delete_on_terminate=delete_on_terminate,
            instance_id=_tag(raw, INSTANCE_TAG),
        )

    async def list_volumes(self, resource_id: str) -> list[ProviderVolume]:
        found = await self._instances(InstanceIds=[resource_id])
        if not found:
            return []
        raw = found[0]
        mappings = {
            m["Ebs"]["VolumeId"]: (
                m["DeviceName"] == raw.get("RootDeviceName"),
                bool(m["Ebs"].get("DeleteOnTermination")),
            )
            for m in raw.get("BlockDeviceMappings", [])
            if "Ebs" in m
        }
        if not mappings:
            return []
        volumes = await self._call("describe_volumes", VolumeIds=list(mappings))
        return [
            self._to_volume(v, *mappings[v["VolumeId"]])
            for v in volumes["Volumes"]
            if v["State"] not in ("deleting", "deleted")
        ]

    async def list_tagged_volumes(self) -> list[ProviderVolume]:
        result = await self._call(
            "describe_volumes", Filters=[{"Name": "tag-key", "Values": [MANAGED_TAG]}]
        )
        volumes = []
        for raw in result["Volumes"]:
            if raw["State"] in ("deleting", "deleted"):
                continue
            attachment: dict[str, Any] = next(iter(raw.get("Attachments", [])), {})
            volumes.append(
                self._to_volume(raw, False, bool(attachment.get("DeleteOnTermination", False)))
            )
        return volumes

    async def delete_volume(self, volume_id: str) -> None:
        await self._call_or_none("delete_volume", VolumeId=volume_id)

    # ------------------------------------------------------------------ Elastic IPs

    async def _addresses(self, instance_id: str) -> list[dict[str, Any]]:
        result = await self._call(
            "describe_addresses",
            Filters=[{"Name": f"tag:{INSTANCE_TAG}", "Values": [instance_id]}],
        )
        return result["Addresses"]  # type: ignore[no-any-return]

    async def release_ips(self, resource_id: str, instance_id: str) -> list[str]:
        released = []
        for address in await self._addresses(instance_id):
            if address.get("AssociationId"):
                await self._call_or_none(
                    "disassociate_address", AssociationId=address["AssociationId"]
                )
            await self._call_or_none("release_address", AllocationId=address["AllocationId"])
            released.append(address["PublicIp"])
        return released

    async def close(self) -> None:
        await asyncio.to_thread(self._ec2.close)
