"""AWS EC2 adapter (boto3).

Every instance, EBS volume and Elastic IP carries `inventiv-instance-id` and `inventiv-managed`
tags; `RunInstances` also gets the instance id as `ClientToken`, so EC2 itself dedupes a retried
create, and a lookup by tag finds what a crashed first try made. `delete` asks EC2 to terminate
and returns: termination takes a minute or more, and whoever needs it finished polls `get`.
boto3 is blocking: every call runs through `asyncio.to_thread`.

Prices: `live_catalogue` asks the Price List Query API (`pricing` client, in `pricing_region`) for
each type's on-demand Linux price in `region`, USD per hour like the static table; a type it
cannot read (throttled, refused, not listed, endpoint unreachable) keeps its static price, and
each offer's `price_source` says which (tests/providers/test_aws_pricing.py, against a stand-in).

What EC2 does that moto does not (tests/providers/test_aws.py injects each):
- It is eventually consistent: an instance can be `InvalidInstanceID.NotFound` for a while after
  `RunInstances`, and NotFound from `TerminateInstances` does not mean it is gone. A NotFound is
  retried for `not_found_window_s` before the instance counts as gone.
- Capacity can be lost after launch: `pending -> terminated` with the state reason
  `Server.InsufficientInstanceCapacity`. That is `NoCapacityError` with EC2's reason, at once.
- The root volume cannot be smaller than the AMI's snapshot.
- On Nitro types EBS volumes are NVMe disks whatever device name was asked for: data volumes are
  created first (so their ids are known), attached once the instance runs, and the user data mounts
  the first one as the model cache by its stable name, /dev/disk/by-id/nvme-Amazon_Elastic_Block_
  Store_vol<id>. Each gets `DeleteOnTermination` as its `VolumeSpec` asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    WaiterError,
)

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
    ProvisioningError,
    PublicIPMixin,
    ResourceNotYetGoneError,
    TransientProviderError,
    VolumesMixin,
    VolumeSpec,
)
from activities.providers.cloud_init import render_user_data
from activities.providers.flavors import agent_environment, get_flavor
from activities.providers.images import WorkerImageSettings

log = logging.getLogger(__name__)

# No EFA: NCCL's EFA path needs an EFA network interface and the aws-ofi-nccl plugin in the image,
# and it only matters across machines; tensor parallelism within one p4d/p5 goes over NVLink.

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
# Why EC2 terminated an instance during its launch (StateReason.Code), and what that means.
_LAUNCH_FAILURES: dict[str, type[ProviderError]] = {
    "Server.InsufficientInstanceCapacity": NoCapacityError,
    "Client.VolumeLimitExceeded": NoCapacityError,
    "Server.InternalError": ProvisioningError,
    "Client.InternalError": ProvisioningError,  # e.g. a KMS key the volumes cannot use
}
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


def launch_failure(raw: Mapping[str, Any]) -> ProviderError | None:
    """The typed error for an instance EC2 terminated while launching it, else None."""
    if raw["State"]["Name"] not in ("shutting-down", "terminated"):
        return None
    reason = raw.get("StateReason") or {}
    error = _LAUNCH_FAILURES.get(reason.get("Code", ""))
    if error is None:
        return None
    return error(
        f"EC2 terminated {raw['InstanceId']} during launch: {reason.get('Message') or reason['Code']}"
    )


# The Price List Query API's filters for the on-demand Linux price of a type in a region: shared
# tenancy, no pre-installed software, capacity used (not a reservation's unused capacity).
def price_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    fields = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def on_demand_hourly_usd(product: str | Mapping[str, Any]) -> float | None:
    """The hourly USD price of one Price List entry's on-demand term, else None (pure).

    An entry is a JSON document (botocore may already have parsed it):
    terms.OnDemand.<offer>.priceDimensions.<dimension>.pricePerUnit.USD, a decimal string,
    per `unit` "Hrs"."""
    doc = json.loads(product) if isinstance(product, str) else product
    for term in (doc.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            if str(dimension.get("unit", "")).lower() not in ("hrs", "hours", "hour"):
                continue
            usd = (dimension.get("pricePerUnit") or {}).get("USD")
            try:
                price = float(str(usd))
            except (TypeError, ValueError):
                continue
            if price > 0:
                return price
    return None


def nitro_device(volume_id: str) -> str:
    """How an EBS volume appears inside a Nitro instance (an NVMe disk named by its id)."""
    return "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "")


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

    def __init__(self, settings: AWSSettings, images: WorkerImageSettings | None = None) -> None:
        self.settings = settings
        self.images = images or WorkerImageSettings()
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
        # Prices are not regional: the Price List Query API lives in a few regions and answers
        # for every region (the regionCode filter).
        self._pricing = boto3.client(
            "pricing",
            region_name=settings.pricing_region,
            endpoint_url=settings.pricing_endpoint_url,
            aws_access_key_id=secret(settings.access_key_id),
            aws_secret_access_key=secret(settings.secret_access_key),
            aws_session_token=secret(settings.session_token),
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=settings.pricing_timeout_s,
                read_timeout=settings.pricing_timeout_s,
            ),
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

    async def live_catalogue(self) -> list[InstanceOffer]:
        """Our types with their on-demand Linux price in `region` from the Price List Query API
        (USD per hour, as the static table); specs stay the table's. A type whose price cannot
        be read (throttled, refused, not listed) keeps its static entry, marked so; once the
        endpoint is unreachable or there are no credentials, every type left does."""
        listed: list[InstanceOffer] = []
        unreachable = False
        for offer in offers(self.settings):
            price = None
            if not unreachable:
                try:
                    price = await self._price(offer.name)
                except (EndpointConnectionError, ConnectionError, NoCredentialsError) as exc:
                    log.warning("AWS Price List unreachable, static prices: %s", exc)
                    unreachable = True
                except (ClientError, BotoCoreError) as exc:
                    log.warning("AWS Price List: no price for %s, static: %s", offer.name, exc)
            if price is None:
                listed.append(offer)
            else:
                listed.append(
                    InstanceOffer(
                        **{
                            **offer.__dict__,
                            "price_per_hour": price,
                            "price_source": "provider-api",
                        }
                    )
                )
        return listed

    async def _price(self, instance_type: str) -> float | None:
        """The on-demand hourly price of the type in our region (every page read until one)."""
        token: str | None = None
        while True:
            page = await asyncio.to_thread(
                self._pricing.get_products,
                ServiceCode="AmazonEC2",
                Filters=price_filters(instance_type, self.settings.region),  # type: ignore[arg-type]
                FormatVersion="aws_v1",
                MaxResults=100,
                **({"NextToken": token} if token else {}),
            )
            for product in page.get("PriceList", []):
                price = on_demand_hourly_usd(product)
                if price is not None:
                    return price
            token = page.get("NextToken")
            if not token:
                log.warning("AWS Price List lists no on-demand price for %s", instance_type)
                return None

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

    def _provider_env(self, request: CreateRequest, data_volumes: list[str]) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.settings.model_s3_prefix:
            env["INVENTIV_AGENT_MODEL_S3_PREFIX"] = self.settings.model_s3_prefix
        if data_volumes:
            env["INVENTIV_AGENT_MODEL_CACHE_DIR"] = self.settings.model_cache_dir
        return env

    async def _describe(self, resource_id: str) -> dict[str, Any] | None:
        """The instance; None once EC2 has not found it for `not_found_window_s` (a new one can
        be NotFound for a while: EC2 is eventually consistent)."""
        deadline = time.monotonic() + self.settings.not_found_window_s
        pause = 0.25
        while True:
            found = await self._instances(InstanceIds=[resource_id])
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(pause, left))  # the last look lands at the window's end
            pause = min(pause * 2, 4.0)

    async def create(self, request: CreateRequest) -> ProviderInstance:
        if not self.settings.security_group_ids:
            # The engine (vLLM) and the agent listen on the instance's address: without a
            # group admitting their ports from the control plane only, anyone could reach them.
            raise InvalidRequestError(
                "INVENTIV_AWS_SECURITY_GROUP_IDS is empty: set a security group that admits "
                f"ports {ENGINE_PORT} (engine) and {AGENT_PORT} (agent) from the control plane only"
            )
        raw = await self._find(request.instance_id)
        if raw is None:
            raw = await self._run(request)
        raw = await self._until_running(raw["InstanceId"], request.instance_id)
        await self._attach_data_volumes(raw, request)
        if self.settings.elastic_ip:
            await self._attach_elastic_ip(raw["InstanceId"], request.instance_id)
        instance = await self.get(raw["InstanceId"]) or self._to_instance(raw)
        instance.volumes = await self.list_volumes(instance.resource_id)
        return instance

    async def _zone(self, request: CreateRequest) -> str:
        """Where the instance and its data volumes go (they must share an availability zone)."""
        if request.zone:
            return request.zone
        if self.settings.subnet_id:
            subnets = await self._call("describe_subnets", SubnetIds=[self.settings.subnet_id])
            return str(subnets["Subnets"][0]["AvailabilityZone"])
        zones = await self._call(
            "describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}]
        )
        return str(zones["AvailabilityZones"][0]["ZoneName"])

    async def _data_volumes(self, request: CreateRequest, zone: str) -> list[str]:
        """The instance's data volumes, made before it so the user data can name them; a retry
        finds those a first try made (by tag and name)."""
        existing = {
            _tag(v, "Name"): v["VolumeId"]
            for v in (
                await self._call(
                    "describe_volumes",
                    Filters=[{"Name": f"tag:{INSTANCE_TAG}", "Values": [request.instance_id]}],
                )
            )["Volumes"]
            if v["State"] not in ("deleting", "deleted")
        }
        ids = []
        for index, spec in enumerate(request.volumes):
            name = spec.name or f"inventiv-{request.instance_id}-{index}"
            volume_id = existing.get(name) or await self._create_volume(request, spec, zone, name)
            ids.append(volume_id)
        return ids

    async def _create_volume(
        self, request: CreateRequest, spec: VolumeSpec, zone: str, name: str
    ) -> str:
        volume_type = spec.volume_type if spec.volume_type != "data" else "gp3"
        kwargs: dict[str, Any] = {
            "AvailabilityZone": zone,
            "Size": max(1, round(spec.size_gb)),
            "VolumeType": volume_type,
            "TagSpecifications": [
                {
                    "ResourceType": "volume",
                    "Tags": [*_tags(request.instance_id), {"Key": "Name", "Value": name}],
                }
            ],
        }
        if volume_type in PROVISIONED_IOPS_TYPES:
            kwargs["Iops"] = PROVISIONED_IOPS
        return str((await self._call("create_volume", **kwargs))["VolumeId"])

    async def _run(self, request: CreateRequest) -> dict[str, Any]:
        flavor = get_flavor(request.flavor)
        offer = next((o for o in AWS_OFFERS if o.name == request.instance_type), None)
        if offer is not None:
            flavor.check_offer(offer)
        image = await self._image(flavor.name)
        zone = await self._zone(request)
        data_volumes = await self._data_volumes(request, zone)
        env = agent_environment(request, provider_env=self._provider_env(request, data_volumes))
        root = image.get("RootDeviceName", "/dev/sda1")
        # The AMI's snapshot sets the smallest root volume EC2 accepts.
        snapshot_gb = next(
            (
                int(m["Ebs"].get("VolumeSize", 0))
                for m in image.get("BlockDeviceMappings", [])
                if m.get("DeviceName") == root and "Ebs" in m
            ),
            0,
        )
        tags = _tags(request.instance_id)
        kwargs: dict[str, Any] = {
            "ImageId": image["ImageId"],
            "InstanceType": request.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": request.instance_id[:64],
            "UserData": render_user_data(
                env,
                worker_image=self.images.image(flavor),
                accelerator=flavor.accelerator,
                model_volume=(
                    (nitro_device(data_volumes[0]), self.settings.model_cache_dir)
                    if data_volumes
                    else None
                ),
            ),
            "BlockDeviceMappings": [
                {
                    "DeviceName": root,
                    "Ebs": {
                        "VolumeSize": max(self.settings.root_volume_gb, snapshot_gb),
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "Placement": {"AvailabilityZone": zone},
            # IMDSv2 only, one hop: the user data (the agent token) and the instance profile's
            # credentials need a session token a forwarded request (SSRF) or a container behind
            # a bridge cannot get.
            "MetadataOptions": {
                "HttpEndpoint": "enabled",
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": 1,
            },
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [*tags, {"Key": "Name", "Value": f"inventiv-{request.instance_id}"}],
                },
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if self.settings.subnet_id:
            kwargs["SubnetId"] = self.settings.subnet_id
        if self.settings.security_group_ids:
            kwargs["SecurityGroupIds"] = self.settings.security_group_ids
        if self.settings.key_name:
            kwargs["KeyName"] = self.settings.key_name
        if self.settings.iam_instance_profile:
            kwargs["IamInstanceProfile"] = {"Name": self.settings.iam_instance_profile}
        try:
            result = await self._call("run_instances", **kwargs)
        except ProviderError as exc:
            if not exc.retryable:  # no instance will use the volumes made for it
                await self._discard_volumes(request.instance_id)
            raise
        return result["Instances"][0]  # type: ignore[no-any-return]

    async def _discard_volumes(self, instance_id: str) -> None:
        for volume in await self.list_tagged_volumes():
            if volume.instance_id == instance_id:
                await self.delete_volume(volume.volume_id)

    async def _until_running(self, resource_id: str, instance_id: str) -> dict[str, Any]:
        """Wait for `running`; an instance EC2 terminated while launching it is its typed error
        (no capacity, ...), with EC2's reason, at once."""
        for _ in range(self.settings.waiter_max_attempts):
            raw = await self._describe(resource_id)
            if raw is None:
                raise TransientProviderError(f"EC2 has not found {resource_id} since its launch")
            if (failure := launch_failure(raw)) is not None:
                await self._discard_volumes(instance_id)
                raise failure
            if raw["State"]["Name"] == "running":
                return raw
            if raw["State"]["Name"] in ("shutting-down", "terminated"):
                reason = (raw.get("StateReason") or {}).get("Message", "no reason given")
                raise ProvisioningError(f"EC2 terminated {resource_id} during launch: {reason}")
            await asyncio.sleep(self.settings.waiter_delay_s)
        raise TransientProviderError(f"EC2 instance {resource_id} is not running yet")

    async def _attach_data_volumes(self, raw: Mapping[str, Any], request: CreateRequest) -> None:
        """Attach the data volumes made for this instance (what a first try has not attached)."""
        if not request.volumes:
            return
        attached = {m["Ebs"]["VolumeId"] for m in raw.get("BlockDeviceMappings", []) if "Ebs" in m}
        zone = raw.get("Placement", {}).get("AvailabilityZone") or await self._zone(request)
        for index, (volume_id, spec) in enumerate(
            zip(await self._data_volumes(request, zone), request.volumes, strict=True)
        ):
            if volume_id in attached:
                continue
            await self._wait("volume_available", VolumeIds=[volume_id])
            device = f"/dev/sd{chr(ord('f') + index)}"
            await self._call(
                "attach_volume", VolumeId=volume_id, InstanceId=raw["InstanceId"], Device=device
            )
            if spec.delete_on_terminate:
                await self._call(
                    "modify_instance_attribute",
                    InstanceId=raw["InstanceId"],
                    BlockDeviceMappings=[
                        {"DeviceName": device, "Ebs": {"DeleteOnTermination": True}}
                    ],
                )

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
        await self._call("associate_address", AllocationId=allocation, InstanceId=resource_id)

    async def start(self, resource_id: str) -> None:
        instance = await self.get(resource_id)
        if instance is None:
            raise InvalidRequestError(f"EC2 instance {resource_id} does not exist")
        if instance.state == "stopped":
            await self._call("start_instances", InstanceIds=[resource_id])

    async def get(self, resource_id: str) -> ProviderInstance | None:
        raw = await self._describe(resource_id)
        if raw is None:
            return None
        if (failure := launch_failure(raw)) is not None:
            raise failure  # capacity lost after launch: not "gone", no capacity
        if raw["State"]["Name"] == "terminated":
            return None
        return self._to_instance(raw)

    async def delete(self, resource_id: str) -> None:
        if await self._call_or_none("terminate_instances", InstanceIds=[resource_id]) is None:
            # NotFound: maybe not visible yet rather than gone; look again for a while.
            raw = await self._describe(resource_id)
            if raw is not None and raw["State"]["Name"] != "terminated":
                await self._call("terminate_instances", InstanceIds=[resource_id])

    async def confirm_gone(self, resource_id: str) -> None:
        raw = await self._describe(resource_id)
        if raw is not None and raw["State"]["Name"] != "terminated":
            raise ResourceNotYetGoneError(
                f"EC2 instance {resource_id} is still there ({raw['State']['Name']})"
            )

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
        await asyncio.to_thread(self._pricing.close)
