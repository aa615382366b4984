"""Every provider kind, in one list: its settings, adapter factory, catalogue and capabilities.

A provider is one folder, `activities/providers/<kind>/`: `settings.py` (its pydantic-settings
class), `catalogue.py` (instance types, prices, machine images) and `adapter.py` (the `Compute`
subclass, the only module that imports the provider's SDK). It is registered by one entry in
`PROVIDERS` below; how to add one, and the contract suite that checks it: docs/providers.md.

This module imports settings and catalogues only. An adapter is imported when the worker builds
it (`build_providers`), so the API validates kinds and reads catalogues with no cloud SDK loaded,
and a provider whose SDK is not installed is off, with the reason logged, instead of breaking
every process. An adapter is on only when its SDK and settings are there: `local` always is;
Scaleway needs INVENTIV_SCALEWAY_ACCESS_KEY, _SECRET_KEY and _PROJECT_ID; AWS needs
INVENTIV_AWS_ACCESS_KEY_ID and _SECRET_ACCESS_KEY; bare metal needs INVENTIV_SSH_ENABLED=true
and the database (its hosts live there); tunnelled machines need INVENTIV_TUNNEL_ENABLED=true
and the database. No reason ever quotes a credential.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from activities.providers.aws import catalogue as aws_catalogue
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import (
    Capability,
    Compute,
    InstanceOffer,
    InvalidRequestError,
    ProviderSettings,
)
from activities.providers.local import catalogue as local_catalogue
from activities.providers.local.settings import LocalFaults
from activities.providers.scaleway import catalogue as scaleway_catalogue
from activities.providers.scaleway.settings import ScalewaySettings
from activities.providers.ssh import catalogue as ssh_catalogue
from activities.providers.ssh.settings import SSHSettings
from activities.providers.tunnel import catalogue as tunnel_catalogue
from activities.providers.tunnel.settings import TunnelSettings
from core.settings import Settings

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ProviderSettings)


@dataclass(frozen=True)
class ProviderSpec(Generic[S]):
    """One provider kind, as the worker, the API, the dashboard and the docs see it."""

    kind: str  # the `Provider.kind` stored in the database
    title: str  # for people: the dashboard, the settings tables
    settings: type[S]
    factory: str  # "module:Class" of the adapter, imported only to build it
    catalogue: Callable[[S], list[InstanceOffer]]  # static: no SDK, no credentials
    capabilities: tuple[Capability, ...] = ()  # the mixins the adapter implements
    sdk: str | None = None  # the module without which the provider is off

    def offers(self, provider_settings: S | None = None) -> list[InstanceOffer]:
        return self.catalogue(provider_settings or self.settings())

    def missing_sdk(self) -> str | None:
        """Why the SDK cannot be imported, found without importing it; None: it can be."""
        if self.sdk is None:
            return None
        try:
            found = importlib.util.find_spec(self.sdk)
        except (ImportError, ValueError):  # blocked, or a broken entry in sys.modules
            found = None
        return None if found is not None else f"its SDK ({self.sdk}) is not installed"

    def unavailable(self, settings: Settings, provider_settings: S | None = None) -> str | None:
        """Why the worker would not run this provider; None: it would."""
        return self.missing_sdk() or (provider_settings or self.settings()).unconfigured(settings)

    def adapter_class(self) -> type[Compute]:
        """The adapter class (this imports the SDK)."""
        module, _, name = self.factory.partition(":")
        adapter: type[Compute] = getattr(importlib.import_module(module), name)
        return adapter

    def build(self, settings: Settings, provider_settings: S | None = None) -> Compute:
        return self.adapter_class().from_settings(provider_settings or self.settings(), settings)


PROVIDERS: dict[str, ProviderSpec[Any]] = {
    spec.kind: spec
    for spec in (
        ProviderSpec(
            kind="local",
            title="Local",
            settings=LocalFaults,
            factory="activities.providers.local.adapter:LocalCompute",
            catalogue=local_catalogue.offers,
            capabilities=(Capability.volumes,),
        ),
        ProviderSpec(
            kind="scaleway",
            title="Scaleway",
            settings=ScalewaySettings,
            factory="activities.providers.scaleway.adapter:ScalewayCompute",
            catalogue=scaleway_catalogue.offers,
            capabilities=(Capability.volumes, Capability.public_ips),
            sdk="scaleway",
        ),
        ProviderSpec(
            kind="aws",
            title="AWS",
            settings=AWSSettings,
            factory="activities.providers.aws.adapter:AWSCompute",
            catalogue=aws_catalogue.offers,
            capabilities=(Capability.volumes, Capability.public_ips),
            sdk="boto3",
        ),
        ProviderSpec(
            kind="ssh",
            title="Bare-metal (SSH)",
            settings=SSHSettings,
            factory="activities.providers.ssh.adapter:SSHCompute",
            catalogue=ssh_catalogue.offers,
            capabilities=(Capability.host_pool, Capability.capacity),
            sdk="asyncssh",
        ),
        ProviderSpec(
            kind="tunnel",
            title="Tunnelled machines",
            settings=TunnelSettings,
            factory="activities.providers.tunnel.adapter:TunnelCompute",
            catalogue=tunnel_catalogue.offers,
            capabilities=(Capability.capacity,),
        ),
    )
}


def provider_spec(kind: str) -> ProviderSpec[Any]:
    try:
        return PROVIDERS[kind]
    except KeyError:
        raise InvalidRequestError(
            f"unknown provider kind {kind!r}; known: {', '.join(PROVIDERS)}"
        ) from None


def check_kind(kind: str) -> str:
    """A pydantic validator: the kind, or ValueError naming the known ones (a 422 in the API)."""
    if kind not in PROVIDERS:
        raise ValueError(f"unknown provider kind {kind!r}; known: {', '.join(PROVIDERS)}")
    return kind


def build_providers(
    settings: Settings, provider_settings: Mapping[str, ProviderSettings] | None = None
) -> dict[str, Compute]:
    """The adapters that can run, by kind (provider settings from the environment unless given).

    The start-up log says which are on and why the others are off."""
    given = provider_settings or {}
    providers: dict[str, Compute] = {}
    disabled: dict[str, str] = {}
    for kind, spec in PROVIDERS.items():
        own = given.get(kind) or spec.settings()
        reason = spec.unavailable(settings, own)
        if reason is None:
            try:
                providers[kind] = spec.build(settings, own)
            except ImportError as exc:  # the SDK is there but one of its imports is not
                reason = f"cannot import its adapter: {exc.name or exc} is missing"
            except InvalidRequestError as exc:  # settings the adapter refuses
                reason = str(exc)
        if reason is not None:
            disabled[kind] = reason
    log.info("providers enabled: %s", ", ".join(sorted(providers)))
    for kind, reason in sorted(disabled.items()):
        log.info("provider %s disabled: %s", kind, reason)
    return providers
