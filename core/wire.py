"""Wire types shared between services (pydantic). The agent imports only this module of core."""

from __future__ import annotations

from pydantic import BaseModel


class RoutableInstance(BaseModel):
    """An instance the gateway may send new requests to (an entry of ROUTING_REGISTRY)."""

    instance_id: str
    deployment_id: str
    project_id: str
    model: str  # the served name clients ask for
    engine_url: str  # OpenAI-compatible base URL of the engine, e.g. http://10.0.0.5:8000
    agent_url: str | None = None
    gpu_count: int = 1
    session_affinity: str = "header"


class RegistryChange(BaseModel):
    op: str  # "put" | "remove"
    instance_id: str
    instance: RoutableInstance | None = None
