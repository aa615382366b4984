"""Scaleway's instance types, list prices and machine images: static data, no SDK."""

from __future__ import annotations

from activities.providers.base import InstanceOffer
from activities.providers.scaleway.settings import ScalewaySettings

# List prices (EUR/hour); editable per provider through the API.
SCALEWAY_OFFERS: tuple[InstanceOffer, ...] = (
    InstanceOffer("PRO2-XXS", None, 0, 0, 2, 8, 0.055, "EUR", ["fr-par-1", "fr-par-2", "nl-ams-1"]),
    InstanceOffer("GPU-3070-S", "RTX-3070", 1, 8, 8, 16, 0.98, "EUR", ["fr-par-2"]),
    InstanceOffer("L4-1-24G", "L4", 1, 24, 8, 48, 0.75, "EUR", ["fr-par-2"]),
    InstanceOffer("L40S-1-48G", "L40S", 1, 48, 8, 96, 1.40, "EUR", ["fr-par-2"]),
    InstanceOffer("H100-1-80G", "H100", 1, 80, 24, 240, 2.73, "EUR", ["fr-par-2"]),
    InstanceOffer("H100-2-80G", "H100", 2, 80, 48, 480, 5.46, "EUR", ["fr-par-2"]),
)

# The image label each worker flavor boots (flavors: activities/providers/flavors.py).
MACHINE_IMAGES: dict[str, str] = {
    "cpu-sim": "ubuntu_noble",
    "nvidia-h100": "ubuntu_jammy_gpu_os_12",
    "nvidia-cuda12": "ubuntu_jammy_gpu_os_12",
}


def offers(settings: ScalewaySettings) -> list[InstanceOffer]:
    return list(SCALEWAY_OFFERS)
