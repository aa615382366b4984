"""Bare metal's one instance type (hosts registered with another type are offered under it)."""

from __future__ import annotations

from activities.providers.base import InstanceOffer
from activities.providers.ssh.settings import SSHSettings

BARE_METAL_TYPE = "bare-metal"


def offers(settings: SSHSettings) -> list[InstanceOffer]:
    return [InstanceOffer(BARE_METAL_TYPE, None, 0, 0, 0, 0, settings.price_per_hour, "EUR")]
