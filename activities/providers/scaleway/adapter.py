"""Scaleway adapter (Instance API, plus the Block Storage API for `sbs_volume` volumes).

Every server, block volume and flexible IP carries the tags `inventiv-instance-id=<id>` and
`inventiv-managed`, so a retried create finds the first server and the reconciler lists ours.
Resource ids are `<zone>/<server id>`, volume ids `<zone>/<volume id>`.

Boot volumes are Block Storage (`sbs_volume`), which every GPU type accepts; the boot volume
Scaleway creates from the image is discovered after create and tagged. Types without local
storage (L4, L40S, H100, PRO2) refuse local (`l_ssd`) volumes with a clear error. The first
block data volume is mounted as the agent's model cache. Scaleway refuses to delete a running
server: `delete` powers it off and raises `ResourceNotYetGoneError` until it is stopped (the
caller retries), then deletes it; volumes and flexible IPs are left to `delete_volume` and
`release_ips`, as the lifecycle workflow deletes them one by one.
The SDK is blocking: every call runs through `asyncio.to_thread`.

Stock: Scaleway allocates the hypervisor slot at poweron, not at create, so `create` first asks
the server-type availability API and refuses a type in `shortage` before making anything, and a
poweron refused for lack of stock is `NoCapacityError` with Scaleway's message (capacity lost
after create). A new block volume is `creating` for a moment: `create` waits for it (bounded by
`state_timeout_s`) before a server uses it. The catalogue comes from the product catalogue API
(`list_servers_types`), the static table when the API cannot be read (`price_source` says which).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from scaleway import Client
from scaleway.block.v1 import BlockV1API
from scaleway.block.v1 import Volume as BlockVolume
from scaleway.block.v1.types import CreateVolumeRequestFromEmpty
from scaleway.instance.v1 import Server, VolumeServerTemplate
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway_core.api import ScalewayException

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
    ResourceNotYetGoneError,
    TransientProviderError,
    VolumesMixin,
    VolumeSpec,
)
from activities.providers.cloud_init import render_user_data
from activities.providers.flavors import agent_environment, get_flavor
from activities.providers.images import WorkerImageSettings
from activities.providers.scaleway.catalogue import MACHINE_IMAGES, SCALEWAY_OFFERS, offers
from activities.providers.scaleway.settings import ScalewaySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Only these types have local NVMe (`l_ssd`); every other type boots from Block Storage.
LOCAL_STORAGE_TYPES = frozenset({"GPU-3070-S"})
LOCAL_VOLUME_TYPES = frozenset({"local", "l_ssd"})
KEEP_TAG = "inventiv-keep"  # a block volume that outlives its server
BOOT_TAG = "inventiv-boot"
USER_DATA_KEY = "cloud-init"
GB = 1_000_000_000

_CAPACITY_TYPES = frozenset({"out_of_stock", "quotas_exceeded", "insufficient_capacity"})
_TRANSIENT_TYPES = frozenset({"precondition_failed", "resource_still_in_use", "transient_state"})


def map_scaleway_error(status: int, error_type: str, message: str) -> ProviderError:
    """A typed error for a Scaleway API error (pure: unit-tested without the API)."""
    text = f"Scaleway {status} {error_type}: {message}"
    lowered = message.lower()
    if error_type in _CAPACITY_TYPES or "out of stock" in lowered or "quota" in lowered:
        return NoCapacityError(text)
    if error_type in _TRANSIENT_TYPES or status in (409, 412, 429) or status >= 500:
        return TransientProviderError(text)
    return InvalidRequestError(text)


def _instance_tag(instance_id: str) -> str:
    return f"{INSTANCE_TAG}={instance_id}"


def _tagged_instance(tags: list[str]) -> str | None:
    prefix = INSTANCE_TAG + "="
    return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)


def _split(resource_id: str) -> tuple[str, str]:
    zone, sep, ident = resource_id.partition("/")
    if not sep:
        raise InvalidRequestError(f"malformed Scaleway id {resource_id!r} (want <zone>/<id>)")
    return zone, ident


def block_device(volume_id: str) -> str:
    """How a Block Storage volume appears inside the server."""
    return f"/dev/disk/by-id/scsi-0SCW_sbs_volume-{volume_id}"


class ScalewayCompute(VolumesMixin, PublicIPMixin, Compute):
    kind = "scaleway"

    def __init__(
        self, settings: ScalewaySettings, images: WorkerImageSettings | None = None
    ) -> None:
        self.settings = settings
        self.images = images or WorkerImageSettings()
        # The SDK logs request bodies at DEBUG, and user data holds the agent's token.
        sdk_log = logging.getLogger("scaleway")
        if sdk_log.getEffectiveLevel() < logging.INFO:
            sdk_log.setLevel(logging.INFO)
        zone = settings.default_zone
        client = Client(
            access_key=settings.access_key.get_secret_value() if settings.access_key else None,
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            default_project_id=settings.project_id,
            default_zone=zone,
            default_region=zone.rsplit("-", 1)[0],
            api_url=settings.api_url.rstrip("/"),
        )
        try:
            self._instance = InstanceUtilsV1API(client)
            self._block = BlockV1API(client)
        except ValueError:
            # The SDK's message quotes the bad value, which may be a secret: never chain it.
            raise InvalidRequestError(
                "malformed Scaleway settings: the access key is SCW + 17 characters, the secret "
                "key and project id are UUIDs, zones look like fr-par-2"
            ) from None

    # ------------------------------------------------------------------ plumbing

    async def _call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ScalewayException as exc:
            raise self._map(exc) from exc
        except OSError as exc:  # requests' connection errors are OSErrors
            raise TransientProviderError(f"Scaleway API unreachable: {exc}") from exc

    async def _call_or_none(self, fn: Callable[..., T], /, **kwargs: Any) -> T | None:
        """Like `_call`, but a missing resource (404) is None."""
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ScalewayException as exc:
            if exc.status_code == 404:
                return None
            raise self._map(exc) from exc
        except OSError as exc:
            raise TransientProviderError(f"Scaleway API unreachable: {exc}") from exc

    @staticmethod
    def _map(exc: ScalewayException) -> ProviderError:
        try:
            body = exc.response.json()
        except ValueError:
            body = {}
        return map_scaleway_error(
            exc.status_code or 500, str(body.get("type", "")), str(body.get("message", ""))
        )

    def _zones(self) -> list[str]:
        zones = {self.settings.default_zone}
        for offer in SCALEWAY_OFFERS:
            zones.update(offer.zones)
        return sorted(zones)

    # ------------------------------------------------------------------ catalogue

    def catalogue(self) -> list[InstanceOffer]:
        return offers(self.settings)

    async def live_catalogue(self) -> list[InstanceOffer]:
        """Our types as Scaleway's product catalogue describes them in each zone (hourly EUR
        price, vCPUs, RAM, GPUs); the static entry where the API cannot be read."""
        listed: dict[str, InstanceOffer] = {}
        for zone in self._zones():
            try:
                products = await self._call(self._instance.list_servers_types, zone=zone)
            except ProviderError as exc:
                log.warning("Scaleway product catalogue unreadable in %s: %s", zone, exc)
                continue
            for offer in SCALEWAY_OFFERS:
                product = products.servers.get(offer.name)
                if product is None:
                    continue
                if offer.name in listed:
                    listed[offer.name].zones.append(zone)
                    continue
                gpu = product.gpu_info
                listed[offer.name] = InstanceOffer(
                    name=offer.name,
                    gpu_model=offer.gpu_model,  # our spelling, which flavors match on
                    gpu_count=product.gpu or 0,
                    gpu_memory_gb=round(gpu.gpu_memory / 2**30) if gpu else 0,
                    vcpus=product.ncpus,
                    ram_gb=round(product.ram / 2**30),
                    price_per_hour=product.hourly_price,
                    currency="EUR",
                    zones=[zone],
                    price_source="provider-api",
                )
        return [listed.get(o.name, o) for o in SCALEWAY_OFFERS]

    @staticmethod
    def _offer(instance_type: str) -> InstanceOffer:
        for offer in SCALEWAY_OFFERS:
            if offer.name == instance_type:
                return offer
        known = ", ".join(o.name for o in SCALEWAY_OFFERS)
        raise InvalidRequestError(f"unknown Scaleway type {instance_type!r}; known: {known}")

    @staticmethod
    def _check_volumes(instance_type: str, volumes: list[VolumeSpec]) -> None:
        for volume in volumes:
            if volume.volume_type not in LOCAL_VOLUME_TYPES:
                continue
            if instance_type not in LOCAL_STORAGE_TYPES:
                raise InvalidRequestError(
                    f"{instance_type} has no local storage (diskless boot): local volumes are "
                    "refused; ask for a block volume instead"
                )
            if not volume.delete_on_terminate:
                raise InvalidRequestError(
                    "a local volume cannot outlive its server; ask for a block volume to keep"
                )

    # ------------------------------------------------------------------ servers

    def _to_instance(self, server: Server) -> ProviderInstance:
        ip = server.public_ips[0].address if server.public_ips else None
        if ip is None and server.public_ip is not None:
            ip = server.public_ip.address
        state = {"running": "running", "stopped": "stopped", "stopped in place": "stopped"}
        return ProviderInstance(
            resource_id=f"{server.zone}/{server.id}",
            instance_id=_tagged_instance(server.tags) or "",
            state=state.get(str(server.state), "pending"),
            ip_address=ip,
            private_ip=server.private_ip,
            zone=server.zone,
            agent_url=f"http://{ip}:{AGENT_PORT}" if ip else None,
            engine_url=f"http://{ip}:{ENGINE_PORT}" if ip else None,
            created_at=server.creation_date,
            extra={"commercial_type": server.commercial_type},
        )

    async def _find(self, zone: str, instance_id: str) -> Server | None:
        servers = await self._call(
            self._instance.list_servers_all, zone=zone, tags=[_instance_tag(instance_id)]
        )
        return servers[0] if servers else None

    async def _server(self, resource_id: str) -> Server | None:
        zone, server_id = _split(resource_id)
        found = await self._call_or_none(self._instance.get_server, zone=zone, server_id=server_id)
        return found.server if found is not None else None

    async def create(self, request: CreateRequest) -> ProviderInstance:
        if not self.settings.security_group_id:
            # The engine (vLLM) and the agent listen on the server's address: without a group
            # admitting their ports from the control plane only, anyone could reach them.
            raise InvalidRequestError(
                "INVENTIV_SCALEWAY_SECURITY_GROUP_ID is unset: set a security group that admits "
                f"ports {ENGINE_PORT} (engine) and {AGENT_PORT} (agent) from the control plane only"
            )
        zone = request.zone or self.settings.default_zone
        offer = self._offer(request.instance_type)
        flavor = get_flavor(request.flavor)
        flavor.check_offer(offer)
        self._check_volumes(offer.name, request.volumes)
        self.images.image(flavor)  # a GPU flavor without a registry: refused before anything
        server = await self._find(zone, request.instance_id)
        if server is None:
            await self._check_stock(zone, offer.name)
        tags = [_instance_tag(request.instance_id), MANAGED_TAG]
        templates: dict[str, VolumeServerTemplate] = {
            "0": VolumeServerTemplate(
                volume_type="sbs_volume",  # type: ignore[arg-type]
                boot=True,
                size=self.settings.boot_volume_gb * GB,
            )
        }
        block_ids: list[str] = []
        for index, spec in enumerate(request.volumes, start=1):
            if spec.volume_type in LOCAL_VOLUME_TYPES:
                templates[str(index)] = VolumeServerTemplate(
                    volume_type="l_ssd",  # type: ignore[arg-type]
                    size=round(spec.size_gb * GB),
                    name=f"inventiv-{request.instance_id}-{index}",
                )
            else:
                volume_id = await self._block_volume(zone, request.instance_id, index, spec, tags)
                block_ids.append(volume_id)
                templates[str(index)] = VolumeServerTemplate(
                    volume_type="sbs_volume",  # type: ignore[arg-type]
                    id=volume_id,
                )
        if server is None:
            public_ips = [await self._flexible_ip(zone, tags)] if self.settings.flexible_ip else []
            try:
                created = await self._call(
                    self._instance.create_server,
                    zone=zone,
                    commercial_type=offer.name,
                    name=f"inventiv-{request.instance_id}",
                    image=flavor.machine_image(MACHINE_IMAGES, self.kind),
                    volumes=templates,
                    tags=tags,
                    project=self.settings.project_id,
                    dynamic_ip_required=not self.settings.flexible_ip,
                    public_ips=public_ips or None,
                    security_group=self.settings.security_group_id,
                )
            except ProviderError as exc:
                if not exc.retryable:  # nothing will use what was made for this server
                    await self._discard(zone, request.instance_id)
                raise
            server = created.server
            assert server is not None
        if server.state == "stopped":
            # Not started yet (maybe a retry after a crash): finish setting it up.
            await self._prepare(server, request, block_ids)
        instance = self._to_instance(server)
        instance.volumes = await self.list_volumes(instance.resource_id)
        return instance

    async def _check_stock(self, zone: str, commercial_type: str) -> None:
        availability = await self._call(self._instance.get_server_types_availability, zone=zone)
        found = availability.servers.get(commercial_type)
        if found is not None and str(found.availability) == "shortage":
            raise NoCapacityError(
                f"Scaleway reports a shortage of {commercial_type} in {zone} "
                "(server-type availability): nothing created"
            )

    async def _until_available(self, zone: str, volume_id: str) -> None:
        """Wait (bounded) for a new block volume to leave `creating`."""
        deadline = time.monotonic() + self.settings.state_timeout_s
        while True:
            volume = await self._call(self._block.get_volume, zone=zone, volume_id=volume_id)
            if str(volume.status) != "creating":
                return
            if time.monotonic() > deadline:
                raise TransientProviderError(
                    f"Scaleway volume {volume_id} still {volume.status} after "
                    f"{self.settings.state_timeout_s:g}s"
                )
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _prepare(self, server: Server, request: CreateRequest, block_ids: list[str]) -> None:
        provider_env: dict[str, str] = {}
        model_volume = None
        if block_ids:
            provider_env["INVENTIV_AGENT_MODEL_CACHE_DIR"] = self.settings.model_cache_dir
            model_volume = (block_device(block_ids[0]), self.settings.model_cache_dir)
        if self.settings.private_network_id:
            provider_env["INVENTIV_AGENT_PRIVATE_NETWORK_ID"] = self.settings.private_network_id
            nics = await self._call(
                self._instance.list_private_ni_cs_all, zone=server.zone, server_id=server.id
            )
            if not any(n.private_network_id == self.settings.private_network_id for n in nics):
                await self._call(
                    self._instance.create_private_nic,
                    zone=server.zone,
                    server_id=server.id,
                    private_network_id=self.settings.private_network_id,
                )
        flavor = get_flavor(request.flavor)
        env = agent_environment(request, provider_env=provider_env)
        await self._call(
            self._instance.set_server_user_data,
            zone=server.zone,
            server_id=server.id,
            key=USER_DATA_KEY,
            content=render_user_data(
                env,
                worker_image=self.images.image(flavor),
                accelerator=flavor.accelerator,
                model_volume=model_volume,
            ).encode(),
        )
        boot = server.volumes.get("0")
        if boot is not None and boot.volume_type == "sbs_volume":
            await self._call(
                self._block.update_volume,
                zone=server.zone,
                volume_id=boot.id,
                tags=[_instance_tag(request.instance_id), MANAGED_TAG, BOOT_TAG],
            )

    async def _discard(self, zone: str, instance_id: str) -> None:
        """Delete the flexible IP and block volumes made for a server that will never exist."""
        tag = [_instance_tag(instance_id)]
        for volume in await self._call(
            self._block.list_volumes_all, zone=zone, include_deleted=False, tags=tag
        ):
            await self._call_or_none(self._block.delete_volume, zone=zone, volume_id=volume.id)
        for ip in await self._call(self._instance.list_ips_all, zone=zone, tags=tag):
            await self._call_or_none(self._instance.delete_ip, zone=zone, ip=ip.id)

    async def _block_volume(
        self, zone: str, instance_id: str, index: int, spec: VolumeSpec, tags: list[str]
    ) -> str:
        name = spec.name or f"inventiv-{instance_id}-{index}"
        existing = await self._call(
            self._block.list_volumes_all,
            zone=zone,
            include_deleted=False,
            tags=[_instance_tag(instance_id)],
        )
        for volume in existing:
            if volume.name == name:
                await self._until_available(zone, volume.id)
                return volume.id
        volume = await self._call(
            self._block.create_volume,
            zone=zone,
            name=name,
            perf_iops=5000,
            project_id=self.settings.project_id,
            from_empty=CreateVolumeRequestFromEmpty(size=round(spec.size_gb * GB)),
            tags=[*tags, *([] if spec.delete_on_terminate else [KEEP_TAG])],
        )
        await self._until_available(zone, volume.id)
        return volume.id

    async def _flexible_ip(self, zone: str, tags: list[str]) -> str:
        existing = await self._call(self._instance.list_ips_all, zone=zone, tags=[tags[0]])
        if existing:
            return existing[0].id
        created = await self._call(
            self._instance.create_ip,
            zone=zone,
            type_="routed_ipv4",  # type: ignore[arg-type]
            project=self.settings.project_id,
            tags=tags,
        )
        assert created.ip is not None
        return created.ip.id

    async def start(self, resource_id: str) -> None:
        server = await self._server(resource_id)
        if server is None:
            raise InvalidRequestError(f"Scaleway server {resource_id} does not exist")
        if server.state == "stopped":
            # Stock is allocated here: "out of stock" is NoCapacityError (map_scaleway_error).
            await self._call(
                self._instance.server_action,
                zone=server.zone,
                server_id=server.id,
                action="poweron",  # type: ignore[arg-type]
            )

    async def get(self, resource_id: str) -> ProviderInstance | None:
        server = await self._server(resource_id)
        return self._to_instance(server) if server is not None else None

    async def delete(self, resource_id: str) -> None:
        server = await self._server(resource_id)
        if server is None:
            return
        if server.state not in ("stopped", "stopped in place"):
            if server.state == "running":
                await self._call(
                    self._instance.server_action,
                    zone=server.zone,
                    server_id=server.id,
                    action="poweroff",  # type: ignore[arg-type]
                )
            raise ResourceNotYetGoneError(
                f"Scaleway server {resource_id} is powering off ({server.state}): "
                "it can be deleted once stopped"
            )
        await self._call_or_none(
            self._instance.delete_server, zone=server.zone, server_id=server.id
        )

    async def list_tagged(self) -> list[ProviderInstance]:
        found: list[ProviderInstance] = []
        for zone in self._zones():
            servers = await self._call(
                self._instance.list_servers_all, zone=zone, tags=[MANAGED_TAG]
            )
            found.extend(self._to_instance(s) for s in servers)
        return found

    # ------------------------------------------------------------------ volumes

    @staticmethod
    def _from_block(volume: BlockVolume, is_boot: bool) -> ProviderVolume:
        return ProviderVolume(
            volume_id=f"{volume.zone}/{volume.id}",
            volume_type="sbs_volume",
            size_gb=volume.size / GB,
            is_boot=is_boot or BOOT_TAG in volume.tags,
            delete_on_terminate=KEEP_TAG not in volume.tags,
            instance_id=_tagged_instance(volume.tags),
        )

    async def list_volumes(self, resource_id: str) -> list[ProviderVolume]:
        server = await self._server(resource_id)
        if server is None:
            return []
        volumes = []
        for key, attached in sorted(server.volumes.items()):
            if attached.volume_type == "sbs_volume":
                block = await self._call_or_none(
                    self._block.get_volume, zone=server.zone, volume_id=attached.id
                )
                if block is not None:
                    volumes.append(self._from_block(block, is_boot=key == "0"))
            else:
                volumes.append(
                    ProviderVolume(
                        volume_id=f"{server.zone}/{attached.id}",
                        volume_type=str(attached.volume_type),
                        size_gb=(attached.size or 0) / GB,
                        is_boot=key == "0",
                        instance_id=_tagged_instance(server.tags),
                    )
                )
        return volumes

    async def list_tagged_volumes(self) -> list[ProviderVolume]:
        found: list[ProviderVolume] = []
        for zone in self._zones():
            volumes = await self._call(
                self._block.list_volumes_all, zone=zone, include_deleted=False, tags=[MANAGED_TAG]
            )
            found.extend(
                self._from_block(v, is_boot=False) for v in volumes if str(v.status) != "deleting"
            )
        return found

    async def delete_volume(self, volume_id: str) -> None:
        zone, ident = _split(volume_id)
        block = await self._call_or_none(self._block.get_volume, zone=zone, volume_id=ident)
        if block is not None and str(block.status) == "deleting":
            return  # asked before
        if block is not None:
            await self._call_or_none(self._block.delete_volume, zone=zone, volume_id=ident)
        else:
            await self._call_or_none(self._instance.delete_volume, zone=zone, volume_id=ident)

    # ------------------------------------------------------------------ flexible IPs

    async def release_ips(self, resource_id: str, instance_id: str) -> list[str]:
        zone, _ = _split(resource_id)
        released = []
        for ip in await self._call(
            self._instance.list_ips_all, zone=zone, tags=[_instance_tag(instance_id)]
        ):
            await self._call_or_none(self._instance.delete_ip, zone=zone, ip=ip.id)
            released.append(ip.address)
        return released
