"""AWS EC2 instance types, list prices and machine images: static data, no SDK."""

from __future__ import annotations

from activities.providers.aws.settings import AWSSettings
from activities.providers.base import InstanceOffer

# On-demand list prices (us-east-1, USD/hour); editable per provider through the API.
AWS_OFFERS: tuple[InstanceOffer, ...] = (
    InstanceOffer("t3.medium", None, 0, 0, 2, 4, 0.0416, "USD"),
    InstanceOffer("g6.xlarge", "L4", 1, 24, 4, 16, 0.8048, "USD"),
    InstanceOffer("g5.xlarge", "A10G", 1, 24, 4, 16, 1.006, "USD"),
    InstanceOffer("g6e.xlarge", "L40S", 1, 48, 4, 32, 1.861, "USD"),
    InstanceOffer("p4d.24xlarge", "A100", 8, 40, 96, 1152, 21.96, "USD"),
    InstanceOffer("p5.48xlarge", "H100", 8, 80, 192, 2048, 55.04, "USD"),
)

_UBUNTU_AMI = "099720109477:ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
_NVIDIA_AMI = "amazon:Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
# "owner:AMI name pattern" each worker flavor boots, unless INVENTIV_AWS_AMI_IDS names an AMI.
MACHINE_IMAGES: dict[str, str] = {
    "cpu-sim": _UBUNTU_AMI,
    "nvidia-h100": _NVIDIA_AMI,
    "nvidia-cuda12": _NVIDIA_AMI,
}


def offers(settings: AWSSettings) -> list[InstanceOffer]:
    """The offers, in the configured region."""
    return [InstanceOffer(**{**offer.__dict__, "zones": [settings.region]}) for offer in AWS_OFFERS]
