"""Tunnelled machines' one instance type (each machine reports its own GPUs when it joins)."""

from __future__ import annotations

from activities.providers.base import InstanceOffer
from activities.providers.tunnel.settings import TunnelSettings

TUNNEL_TYPE = "tunnel"


def offers(settings: TunnelSettings) -> list[InstanceOffer]:
    return [InstanceOffer(TUNNEL_TYPE, None, 0, 0, 0, 0, settings.price_per_hour, "EUR")]
