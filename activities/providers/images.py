"""Where the worker images come from: the operator's registry (INVENTIV_WORKER_*).

The GPU flavors run the node agent and vLLM in a worker image built from the repository's
Dockerfiles (`agent/Dockerfile.nvidia`, `agent/Dockerfile.rocm`; the README's "Worker images"
says how to build and push them). Nothing is published for you: a GPU machine pulls
`<registry>/<image>:<tag>`, and with no registry set, a flavor that needs an image is refused
before anything is created, instead of a pull that times out on the machine.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from activities.providers.base import InvalidRequestError
from activities.providers.flavors import Flavor


class WorkerImageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_WORKER_", extra="ignore")

    registry: str | None = Field(
        default=None,
        description="Registry (and namespace) the worker images are pushed to, e.g. "
        "ghcr.io/acme/inventiv; GPU flavors are refused while unset",
    )
    tag: str = Field(default="latest", description="Tag of the worker images")
    images: dict[str, str] = Field(
        default_factory=dict,
        description="Full image per flavor as JSON, overriding registry and tag, e.g. "
        '{"nvidia-h100": "ghcr.io/acme/worker:h100"}',
    )

    def image(self, flavor: Flavor) -> str | None:
        """The image a machine of this flavor pulls; None: the flavor runs no container."""
        if flavor.worker_image is None:
            return None
        if flavor.name in self.images:
            return self.images[flavor.name]
        if not self.registry:
            raise InvalidRequestError(
                f"flavor {flavor.name!r} runs in the worker image {flavor.worker_image} (built "
                f"from {flavor.dockerfile}) and INVENTIV_WORKER_REGISTRY is unset: build and "
                "push it (README, 'Worker images'), then set INVENTIV_WORKER_REGISTRY"
            )
        return f"{self.registry.rstrip('/')}/{flavor.worker_image}:{self.tag}"
