"""Live events over SSE: only the caller's projects, resume with Last-Event-ID without losing
events, keep-alive comments. Served by uvicorn (a real streaming HTTP server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from core.events import publish_event
from core.redis_keys import EVENTS_STREAM
from core.settings import Settings
from tests.agent.helpers import serving
from tests.api.conftest import Tenant


@pytest.fixture
async def api_base(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings, sse_keepalive_s=0.3)) as url:
        yield url


class Listener:
    def __init__(self, lines: AsyncIterator[str]) -> None:
        self.lines = lines
        self.comments: list[str] = []

    async def next_event(self) -> dict[str, Any]:
        """The next event (id and JSON data), skipping comments and retry hints."""
        event: dict[str, Any] = {}
        async for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                return event
        raise AssertionError("the stream ended")

    async def wait_connected(self) -> None:
        async for line in self.lines:
            if line.startswith("retry:"):
                return


@asynccontextmanager
async def listen(base: str, tenant: Tenant, last_id: str | None = None) -> AsyncIterator[Listener]:
    headers = dict(tenant.headers)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        client.stream("GET", "/api/v1/events", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        listener = Listener(response.aiter_lines())
        await listener.wait_connected()
        yield listener


async def emit(redis: aioredis.Redis, tenant: Tenant, n: int) -> str:
    return await publish_event(redis, "state", str(tenant.project.id), {"n": n})


async def received(listener: Listener, count: int) -> list[int]:
    events = [await asyncio.wait_for(listener.next_event(), 10) for _ in range(count)]
    return [e["data"]["data"]["n"] for e in events]


async def test_events_are_scoped_and_resume_after_last_event_id(
    api_base: str, redis_client: aioredis.Redis, alice: Tenant, bob: Tenant
) -> None:
    before = await emit(redis_client, alice, 0)  # older than the connection: not replayed
    async with listen(api_base, alice) as stream:
        await emit(redis_client, alice, 1)
        await emit(redis_client, bob, 2)
        last_seen = await emit(redis_client, alice, 3)
        assert await received(stream, 2) == [1, 3]

    # Missed while disconnected: delivered on reconnect, in order, none of Bob's.
    await emit(redis_client, alice, 4)
    await emit(redis_client, bob, 5)
    await emit(redis_client, alice, 6)
    async with listen(api_base, alice, last_id=last_seen) as stream:
        assert await received(stream, 2) == [4, 6]
        await emit(redis_client, alice, 7)
        assert await received(stream, 1) == [7]

    async with listen(api_base, bob, last_id=before) as stream:
        assert await received(stream, 2) == [2, 5]


async def test_keepalive_and_refusals(
    api_base: str, redis_client: aioredis.Redis, alice: Tenant
) -> None:
    async with listen(api_base, alice) as stream:
        await asyncio.sleep(1)
        await emit(redis_client, alice, 1)
        assert await received(stream, 1) == [1]
        assert ": keep-alive" in stream.comments
    async with httpx.AsyncClient(base_url=api_base, timeout=10) as client:
        anonymous = await client.get("/api/v1/events")
        assert anonymous.status_code == 401
        bad = await client.get(
            "/api/v1/events", headers={**alice.headers, "Last-Event-ID": "yesterday"}
        )
        assert bad.status_code == 400 and "Last-Event-ID" in bad.text


async def test_resume_after_trimmed_events_asks_for_a_resync(
    api_base: str, redis_client: aioredis.Redis, alice: Tenant
) -> None:
    old = await emit(redis_client, alice, 1)
    await emit(redis_client, alice, 2)
    kept = await emit(redis_client, alice, 3)
    # 1 and 2 are gone, 3 is kept
    await redis_client.xtrim(EVENTS_STREAM, maxlen=1, approximate=False)
    async with listen(api_base, alice, last_id=old) as stream:
        first = await asyncio.wait_for(stream.next_event(), 10)
        assert first["data"]["kind"] == "resync" and "id" not in first
        assert await received(stream, 1) == [3]
    async with listen(api_base, alice, last_id=kept) as stream:  # nothing lost: no resync
        await emit(redis_client, alice, 4)
        assert await received(stream, 1) == [4]
