"""The local provider's one instance type: a simulated GPU machine on this host."""

from __future__ import annotations

from activities.providers.base import InstanceOffer
from activities.providers.local.settings import LocalFaults

LOCAL_INSTANCE_TYPE = "local-sim-1"


def offers(faults: LocalFaults) -> list[InstanceOffer]:
    return [
        InstanceOffer(
            name=LOCAL_INSTANCE_TYPE,
            gpu_model="sim",
            gpu_count=1,
            gpu_memory_gb=80,
            vcpus=1,
            ram_gb=1,
            price_per_hour=0.10,
            zones=["local"],
        )
    ]
