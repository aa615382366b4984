"""Shared fixtures: real PostgreSQL, Redis and Temporal servers, started once per test session.

`DATABASE_URL`, `REDIS_URL` and `TEMPORAL_ADDRESS` switch each part to an external server, as in
production. Each test gets its own database cloned from a migrated template, an empty Redis, and
a fresh Temporal task queue.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio.client import Client

from core.db import make_engine, make_sessionmaker
from core.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedTemporal, free_port
from core.migrate import upgrade
from core.settings import Settings

TEMPLATE_DB = "inventiv_template"


@dataclass
class Stack:
    """URLs of the real servers this test session talks to."""

    admin_db_url: str  # a database to run CREATE DATABASE from
    redis_url: str
    temporal_address: str
    # The embedded servers this session started (none for a part set by its URL), by part:
    # fault tests freeze them.
    servers: dict[str, EmbeddedPostgres | EmbeddedRedis | EmbeddedTemporal] = field(
        default_factory=dict
    )

    def db_url(self, name: str) -> str:
        return replace_db_name(self.admin_db_url, name)


def replace_db_name(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin_execute(stack: Stack, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(stack.admin_db_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    started: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedTemporal] = []
    try:
        db_url = os.environ.get("DATABASE_URL")
        if not db_url:
            pg = EmbeddedPostgres(root / "pg")
            db_url = pg.start()
            started.append(pg)
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            rd = EmbeddedRedis(root / "redis")
            redis_url = rd.start()
            started.append(rd)
        temporal_address = os.environ.get("TEMPORAL_ADDRESS")
        if not temporal_address:
            tp = EmbeddedTemporal(db_file=None, port=free_port(), ui_port=None)
            temporal_address = tp.start()
            started.append(tp)
        servers = {type(part).__name__.removeprefix("Embedded").lower(): part for part in started}
        stack = Stack(db_url, redis_url, temporal_address, servers)
        import asyncio

        asyncio.run(_admin_execute(stack, f"DROP DATABASE IF EXISTS {TEMPLATE_DB}"))
        asyncio.run(_admin_execute(stack, f"CREATE DATABASE {TEMPLATE_DB}"))
        upgrade(stack.db_url(TEMPLATE_DB))
        yield stack
    finally:
        for part in reversed(started):
            part.stop()


@pytest.fixture
async def db_url(stack: Stack) -> AsyncIterator[str]:
    """A fresh database for this test, cloned from the migrated template."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin_execute(stack, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield stack.db_url(name)
    await _admin_execute(stack, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def redis_url(stack: Stack) -> AsyncIterator[str]:
    """Redis, emptied before the test (tests run one at a time)."""
    client = aioredis.Redis.from_url(stack.redis_url)
    await client.flushall()
    await client.aclose()
    yield stack.redis_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def sessionmaker(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url, pool_size=5)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def temporal_client(stack: Stack) -> Client:
    return await Client.connect(stack.temporal_address, namespace="default")


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(
    tmp_path: Path, db_url: str, redis_url: str, stack: Stack, task_queue: str
) -> Iterator[Settings]:
    """Settings pointing every part at the test servers, with short lifecycle timings.

    Afterwards, any local machine a test left running is stopped: a failing test must not leave
    agents behind for the next one.
    """
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        redis_url=redis_url,
        temporal_address=stack.temporal_address,
        task_queue=task_queue,
        secret_key="test-secret-key-" + uuid.uuid4().hex,
        api_port=free_port(),
        gateway_port=free_port(),
        boot_timeout_s=60,
        health_interval_s=1,
        heartbeat_fresh_s=30,
        drain_timeout_s=10,
        archive_after_s=3600,
        boot_poll_interval_s=0.2,
        reconcile_interval_s=2,
        orphan_grace_s=5,
        missing_grace_s=1,
    )
    yield settings
    from activities.providers.local.adapter import LocalCompute

    LocalCompute(settings).power_off_all()
