"""Provider adapters: one base class plus capability mixins, in the style of dstack's `Compute`.

Every resource an adapter creates carries our instance id as a tag (or in its name), so a retried
create finds what the first try made, and the reconciler can list what is ours. `delete` and
`delete_volume` are idempotent: a missing resource is success, and they return once the request
is made, not once the resource is gone (`get` says when it is). Blocking SDK calls run through
`asyncio.to_thread`.

This module imports no cloud SDK: the registry, the API and the orchestration import it freely.
How to add a provider: docs/providers.md.
"""

from __future__ import annotations

import abc
import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from pydantic_settings import BaseSettings

if TYPE_CHECKING:
    from core.models import BareMetalHost
    from core.settings import Settings

# The tag every resource carries: its value is the Inventiv instance id.
INSTANCE_TAG = "inventiv-instance-id"
MANAGED_TAG = "inventiv-managed"

AGENT_PORT = 8090
ENGINE_PORT = 8000


class ProviderError(Exception):
    """Base of adapter errors. `retryable` tells the workflow whether a retry can help."""

    retryable = True


class TransientProviderError(ProviderError):
    """Rate limit, timeout, 5xx: retried."""


class ResourceNotYetGoneError(TransientProviderError):
    """A delete was requested and the resource still exists: retried until it is gone.

    `delete` issues the request and returns; the caller that must see the machine gone (the
    teardown activity) checks `get()` and raises this, so Temporal's retry policy does the
    waiting instead of one activity blocking for minutes.
    """


class NoCapacityError(ProviderError):
    """No capacity or quota for this type/zone: not retried for that type."""

    retryable = False


class InvalidRequestError(ProviderError):
    """The request can never succeed as given (bad type, bad image, bad volume): not retried."""

    retryable = False


class ProviderUnavailableError(ProviderError):
    """The provider is off in this process (its SDK is not installed): not retried."""

    retryable = False


class ProvisioningError(ProviderError):
    """The machine was created but failed to come up (e.g. agent install failed)."""

    retryable = False


@dataclass
class VolumeSpec:
    size_gb: float
    volume_type: str = "data"
    delete_on_terminate: bool = True
    name: str | None = None


@dataclass
class ProviderVolume:
    volume_id: str
    volume_type: str
    size_gb: float
    is_boot: bool = False
    delete_on_terminate: bool = True
    instance_id: str | None = None  # our tag, when the volume carries one


@dataclass
class ProviderInstance:
    resource_id: str
    instance_id: str  # our tag
    state: str  # pending | running | stopped | terminated
    ip_address: str | None = None
    private_ip: str | None = None
    zone: str | None = None
    agent_url: str | None = None
    engine_url: str | None = None
    created_at: datetime | None = None
    volumes: list[ProviderVolume] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CreateRequest:
    instance_id: str
    instance_type: str
    model: str
    served_name: str
    flavor: str = "cpu-sim"
    zone: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Environment handed to the agent (control-plane URL, per-instance token, expected checksum).
    agent_env: dict[str, str] = field(default_factory=dict)
    volumes: list[VolumeSpec] = field(default_factory=list)
    gpu_count: int = 1


@dataclass
class InstanceOffer:
    """One entry of a provider's instance-type catalogue."""

    name: str
    gpu_model: str | None
    gpu_count: int
    gpu_memory_gb: float
    vcpus: int
    ram_gb: float
    price_per_hour: float
    currency: str = "EUR"
    zones: list[str] = field(default_factory=list)
    # Where specs and price come from: "provider-api" (read from the provider just now) or
    # "static" (the table in the kind's catalogue.py: offline, or the provider has no such API).
    price_source: str = "static"


class ProviderSettings(BaseSettings):
    """A provider's settings (its own `INVENTIV_<KIND>_` environment prefix)."""

    def unconfigured(self, settings: Settings) -> str | None:
        """Why the provider cannot run with these settings (never quoting a secret); None: it can."""
        return None


class Capability(enum.StrEnum):
    """What a provider kind offers beyond creating and deleting machines (each is a mixin of
    its adapter, declared in its registry entry)."""

    volumes = "volumes"  # provider volumes created with the machine, deleted one by one
    public_ips = "public_ips"  # detachable public addresses, released at termination
    host_pool = "host_pool"  # lends registered hosts (the API's bare-metal hosts)
    capacity = "capacity"  # finitely many machines: says how many more instances fit now


class Compute(abc.ABC):
    """What every provider adapter does."""

    kind: str = ""

    @classmethod
    def from_settings(cls, provider_settings: Any, settings: Settings) -> Self:
        """The adapter the registry builds: from its provider settings (most need nothing more)."""
        return cls(provider_settings)  # type: ignore[call-arg]  # an adapter's own __init__

    async def confirm_gone(self, resource_id: str) -> None:
        """Raise `ResourceNotYetGoneError` while the machine still exists (after `delete`)."""
        machine = await self.get(resource_id)
        if machine is not None:
            raise ResourceNotYetGoneError(
                f"{self.kind} machine {resource_id} is still there ({machine.state})"
            )

    @abc.abstractmethod
    async def create(self, request: CreateRequest) -> ProviderInstance:
        """Create (or find, by tag) the machine for `request.instance_id`."""

    @abc.abstractmethod
    async def start(self, resource_id: str) -> None:
        """Power the machine on (a no-op where create already starts it)."""

    @abc.abstractmethod
    async def get(self, resource_id: str) -> ProviderInstance | None:
        """Current state and addresses; None when the machine no longer exists."""

    @abc.abstractmethod
    async def delete(self, resource_id: str) -> None:
        """Ask for the machine's deletion and return promptly (never wait minutes for it).

        Idempotent: a missing machine is success. When a step must finish before the delete can
        be asked for (a power-off), start it and raise `ResourceNotYetGoneError`: the caller
        retries. Whether the machine is gone is `get` (or `confirm_gone`) after this returns."""

    @abc.abstractmethod
    async def list_tagged(self) -> list[ProviderInstance]:
        """Every machine carrying our tags (for the reconciler)."""

    @abc.abstractmethod
    def catalogue(self) -> list[InstanceOffer]:
        """Instance types this adapter can create, with list prices (static, no API call)."""

    async def live_catalogue(self) -> list[InstanceOffer]:
        """The catalogue with specs and prices from the provider's own API where it has one;
        the static table, marked so, where it has none or cannot be read."""
        return self.catalogue()

    # Without the volumes capability a machine has no provider volumes: nothing to list or delete.

    async def list_volumes(self, resource_id: str) -> list[ProviderVolume]:
        """Volumes attached to (or created for) the machine, boot volume included."""
        return []

    async def list_tagged_volumes(self) -> list[ProviderVolume]:
        """Volumes carrying our tag, attached or not (orphan detection)."""
        return []

    async def delete_volume(self, volume_id: str) -> None:  # noqa: B027 - see VolumesMixin
        """Delete one volume. Idempotent: a missing volume is success."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""


# Capability mixins come before `Compute` in an adapter's bases, so their abstract methods win.


class VolumesMixin(abc.ABC):
    """Providers whose machines get provider volumes (block volumes, EBS, local folders)."""

    @abc.abstractmethod
    async def list_volumes(self, resource_id: str) -> list[ProviderVolume]:
        """Volumes attached to (or created for) the machine, boot volume included."""

    @abc.abstractmethod
    async def list_tagged_volumes(self) -> list[ProviderVolume]:
        """Volumes carrying our tag, attached or not (orphan detection)."""

    @abc.abstractmethod
    async def delete_volume(self, volume_id: str) -> None:
        """Delete one volume. Idempotent: a missing volume is success."""


class HostPoolMixin(abc.ABC):
    """Providers that lend registered hosts (the API's bare-metal hosts), one instance each."""

    @abc.abstractmethod
    async def claim_host(self, instance_id: str, instance_type: str) -> BareMetalHost | None:
        """The host this instance holds, else a free one claimed atomically; None: none free."""

    @abc.abstractmethod
    async def release_host(self, host_id: uuid.UUID, instance_id: str) -> bool:
        """Give the host back (only if this instance holds it); True when it did."""


class CapacityMixin(abc.ABC):
    """Providers with a known, finite set of machines (registered hosts, tunnelled machines):
    the autoscaler asks before it scales up, rather than learn it from failed creates."""

    @abc.abstractmethod
    async def available_now(self, instance_type: str, project_id: uuid.UUID) -> int:
        """How many more instances of this type the project could place now."""


class PublicIPMixin(abc.ABC):
    """Providers with detachable public addresses (Scaleway flexible IP, AWS Elastic IP)."""

    @abc.abstractmethod
    async def release_ips(self, resource_id: str, instance_id: str) -> list[str]:
        """Detach and delete every address tagged for the instance; returns what was released."""


CAPABILITY_MIXINS: dict[Capability, type] = {
    Capability.volumes: VolumesMixin,
    Capability.public_ips: PublicIPMixin,
    Capability.host_pool: HostPoolMixin,
    Capability.capacity: CapacityMixin,
}


def capabilities_of(adapter: type[Compute]) -> frozenset[Capability]:
    """The capabilities an adapter class implements (by its mixins)."""
    return frozenset(c for c, mixin in CAPABILITY_MIXINS.items() if issubclass(adapter, mixin))
