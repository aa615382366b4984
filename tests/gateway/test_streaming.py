"""Streams: chunks pass through as the engine produces them, keep-alive comments while the first
token is slow, and a client that leaves cancels the engine's work."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, serving
from tests.gateway.test_api import wait_for

STREAM = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def start_engine(engines: Engines, registry: Registry, gateway: RunningGateway):  # type: ignore[no-untyped-def]
    engine = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    return engine


async def test_chunks_arrive_before_the_engine_finishes(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await start_engine(engines, registry, gateway)
    engine.behaviour.tokens = 4
    engine.behaviour.token_delay_s = 0.4
    arrivals: list[tuple[float, bool, bytes]] = []
    async with (
        gateway.client(seeded.api_key) as client,
        client.stream("POST", "/v1/chat/completions", json=STREAM) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_raw():
            arrivals.append((time.monotonic(), engine.requests[0].finished, chunk))
    data = b"".join(chunk for _, _, chunk in arrivals)
    assert data.count(b"data: ") == 5  # four tokens and [DONE]; the usage chunk was removed
    assert b'"choices":[]' not in data
    # The first token reached the client while the engine was still generating the rest.
    assert arrivals[0][1] is False
    assert b"t0" in arrivals[0][2]
    assert arrivals[-1][0] - arrivals[0][0] >= 1.0


async def test_keepalive_comments_while_the_first_token_is_slow(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await start_engine(engines, registry, gateway)
    engine.behaviour.first_token_delay_s = 1.0  # keep-alive period is 0.3 s in these tests
    async with gateway.client(seeded.api_key) as client:
        response = await client.post("/v1/chat/completions", json=STREAM)
    events = [e for e in response.text.split("\n\n") if e]
    comments = [e for e in events if e.startswith(":")]
    assert 2 <= len(comments) <= 4
    assert events[: len(comments)] == comments  # only before the first token
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("gateway_server", ["lean", "uvicorn"])
async def test_client_disconnect_cancels_the_engine_request(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await start_engine(engines, registry, gateway)
    engine.behaviour.tokens = 50
    engine.behaviour.token_delay_s = 0.1
    async with (
        gateway.client(seeded.api_key) as client,
        client.stream("POST", "/v1/chat/completions", json=STREAM) as response,
    ):
        async for chunk in response.aiter_raw():
            assert b"t0" in chunk
            break
    # The client closed its connection after one token: the engine stops well before 50.
    await wait_for(lambda: engine.requests[0].cancelled, timeout=3)
    assert not engine.requests[0].finished
    await wait_for(
        lambda: (
            gateway.app.router.backends
            and all(b.inflight == 0 for b in gateway.app.router.backends.values())
        )
    )


async def test_client_disconnect_while_queued_frees_the_slot(
    start_gateway, gateway_settings, seeded: Seeded, engines: Engines, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    gateway_settings.max_inflight_per_gpu = 1
    gateway_settings.queue_deadline_s = 10
    gateway = await start_gateway()
    engine = await start_engine(engines, registry, gateway)
    hold = asyncio.Event()
    engine.behaviour.hold = hold
    queue = gateway.app.router.queue(str(seeded.deployment.id))
    async with gateway.client(seeded.api_key) as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=STREAM))
        await wait_for(lambda: engine.active == 1)
        async with gateway.client(seeded.api_key) as leaving:
            queued = asyncio.create_task(leaving.post("/v1/chat/completions", json=STREAM))
            await wait_for(lambda: queue.length == 1)
            queued.cancel()
        await wait_for(lambda: queue.length == 0)
        hold.set()
        assert (await first).status_code == 200
        assert (await client.post("/v1/chat/completions", json=STREAM)).status_code == 200
    assert len(engine.requests) == 2  # the abandoned request never reached the engine
