"""Gateway fixtures: real engines on loopback, the gateway served by uvicorn, rows in PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from api.security import new_api_key
from core.embedded import free_port
from core.models import ApiKey
from core.redis_keys import ROUTING_CHANNEL, ROUTING_REGISTRY
from core.settings import Settings
from core.wire import RegistryChange, RoutableInstance, RoutingStrategy
from gateway.app import Gateway, create_app
from gateway.protocols.http_server import LeanServer
from gateway.routing import Backend
from gateway.settings import GatewaySettings
from tests.factories import Seeded, seed
from tests.gateway.engine import RunningServer, TestEngine

MODEL = "test-model"


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    """Short periods so tests see changes quickly; tests may tweak fields before the gateway starts."""
    return GatewaySettings(
        registry_refresh_s=0.5,
        load_poll_s=0.2,
        deployments_refresh_s=0.5,
        load_publish_s=0.2,
        log_flush_s=0.2,
        queue_deadline_s=2.0,
        keepalive_interval_s=0.3,
        eject_s=1.0,
        max_inflight_per_gpu=64,
    )


@pytest.fixture
async def seeded(sessionmaker) -> Seeded:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return await seed(session, model=MODEL)


async def add_key(
    sessionmaker,  # type: ignore[no-untyped-def]
    project_id: uuid.UUID,
    rpm: int | None = None,
    tpm: int | None = None,
) -> tuple[str, ApiKey]:
    secret, prefix, key_hash = new_api_key()
    row = ApiKey(
        project_id=project_id,
        name="extra",
        prefix=prefix,
        key_hash=key_hash,
        rpm_limit=rpm,
        tpm_limit=tpm,
    )
    async with sessionmaker() as session:
        session.add(row)
        await session.commit()
    return secret, row


@dataclass
class Engines:
    """Real engine servers started for a test."""

    start: Callable[[str], Awaitable[TestEngine]]
    servers: dict[str, RunningServer]


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    servers: dict[str, RunningServer] = {}

    async def start(name: str) -> TestEngine:
        engine = TestEngine(name=name)
        server = RunningServer(engine, free_port())
        await server.start()
        servers[name] = server
        return engine

    yield Engines(start, servers)
    for server in servers.values():
        await server.stop()


class Registry:
    """Writes the routing registry the way the worker's activities do (hash + channel)."""

    def __init__(self, redis: aioredis.Redis, seeded: Seeded) -> None:
        self.redis = redis
        self.seeded = seeded

    def instance(
        self,
        url: str,
        *,
        gpu_count: int = 1,
        routing: RoutingStrategy = RoutingStrategy.sticky_header,
        model: str = MODEL,
    ) -> RoutableInstance:
        return RoutableInstance(
            instance_id=str(uuid.uuid4()),
            deployment_id=str(self.seeded.deployment.id),
            project_id=str(self.seeded.project.id),
            model=model,
            engine_url=url,
            gpu_count=gpu_count,
            routing=routing,
        )

    async def put(self, instance: RoutableInstance) -> None:
        await self.redis.hset(ROUTING_REGISTRY, instance.instance_id, instance.model_dump_json())
        change = RegistryChange(op="put", instance_id=instance.instance_id, instance=instance)
        await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())

    async def remove(self, instance_id: str) -> None:
        await self.redis.hdel(ROUTING_REGISTRY, instance_id)
        change = RegistryChange(op="remove", instance_id=instance_id)
        await self.redis.publish(ROUTING_CHANNEL, change.model_dump_json())


def serving(app: Gateway, model: str) -> list[Backend]:
    """The ready instances the gateway knows under the served name `model` (any project)."""
    return [b for b in app.router.backends.values() if b.info.model == model]


@pytest.fixture
def registry(redis_client: aioredis.Redis, seeded: Seeded) -> Registry:
    return Registry(redis_client, seeded)


class LeanRunning:
    """The gateway on its own lean HTTP server (what `python -m gateway` runs) in this loop."""

    def __init__(self, app: Gateway, port: int) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", port))
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        server = LeanServer(
            self.app, self.app.startup, self.app.shutdown, limits=self.app.config.server_limits()
        )
        self.task = asyncio.create_task(server.serve(self.sock, self.stop_event, graceful_s=5))
        while not self.app.ready:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await self.task


@dataclass
class RunningGateway:
    app: Gateway
    url: str
    server: RunningServer | LeanRunning

    def client(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def gateway_server() -> str:
    """Which HTTP server runs the gateway app in-process: "lean" (production) or "uvicorn"."""
    return "lean"


@pytest.fixture
async def start_gateway(
    settings: Settings, gateway_settings: GatewaySettings, gateway_server: str
) -> AsyncIterator[Callable[[], Awaitable[RunningGateway]]]:
    started: list[RunningGateway] = []

    async def start() -> RunningGateway:
        app = create_app(settings, gateway_settings)
        server: RunningServer | LeanRunning
        if gateway_server == "lean":
            server = LeanRunning(app, free_port())
        else:
            server = RunningServer(app, free_port())
        await server.start()
        running = RunningGateway(app, server.url, server)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.stop()


@pytest.fixture
async def gateway(
    start_gateway: Callable[[], Awaitable[RunningGateway]], seeded: Seeded
) -> RunningGateway:
    return await start_gateway()
