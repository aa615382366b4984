"""The gateway's HTTP edges under abuse, against its own lean server over real sockets: oversized
and endless header blocks are refused at once while others are served, slow clients do not slow
anyone else and are cut at their deadlines, a reader that stops frees its instance slot, keys and
addresses are capped, errors carry no engine address, and /metrics is not public."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from core.embedded import free_port
from gateway.settings import GatewaySettings
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, serving
from tests.gateway.test_api import wait_for

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def address(gateway: RunningGateway) -> tuple[str, int]:
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def status_of(reader: asyncio.StreamReader, within_s: float) -> int:
    """The status code of the response on this connection, which must then close."""
    line = await asyncio.wait_for(reader.readline(), within_s)
    assert line.startswith(b"HTTP/1.1 "), line
    rest = await asyncio.wait_for(reader.read(), within_s)  # EOF: the server closed
    assert b"connection: close" in rest.lower()
    return int(line.split()[1])


async def timed_models(gateway: RunningGateway, key: str) -> float:
    async with gateway.client(key) as client:
        started = time.monotonic()
        response = await client.get("/v1/models")
        assert response.status_code == 200
        return time.monotonic() - started


async def test_a_64_mib_header_and_10000_headers_are_refused_within_a_second(
    gateway: RunningGateway, seeded: Seeded
) -> None:
    host, port = address(gateway)

    async def huge_header() -> tuple[int, float]:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")

        async def pour() -> None:
            piece = b"a" * (1 << 20)
            with contextlib.suppress(ConnectionError):
                for _ in range(64):
                    writer.write(piece)
                    await writer.drain()

        pouring = asyncio.create_task(pour())
        try:
            return await status_of(reader, 1.0), time.monotonic() - started
        finally:
            pouring.cancel()
            writer.close()

    async def many_headers() -> tuple[int, float]:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        try:
            return await status_of(reader, 1.0), time.monotonic() - started
        finally:
            writer.close()

    big, many, served = await asyncio.gather(
        huge_header(), many_headers(), timed_models(gateway, seeded.api_key)
    )
    assert big[0] == 431 and big[1] < 1.0
    assert many[0] == 431 and many[1] < 1.0
    assert served < 1.0  # another client was answered meanwhile


async def test_a_header_block_over_the_limit_in_one_read_is_refused_but_a_big_body_is_not(
    gateway: RunningGateway, seeded: Seeded
) -> None:
    """The cap holds for a block that arrives whole in the read that starts the request, on a
    fresh connection and after a request on a kept-alive one; a body that big is no header."""
    host, port = address(gateway)
    big_head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n"
    ask = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(big_head)
    assert await status_of(reader, 2.0) == 431
    writer.close()

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(ask)
    assert (await asyncio.wait_for(reader.readline(), 2.0)).startswith(b"HTTP/1.1 200")
    writer.write(big_head)
    head_and_rest = await asyncio.wait_for(reader.read(), 2.0)  # the 200's rest, then the 431
    assert b"HTTP/1.1 431" in head_and_rest
    writer.close()

    body = b'{"model":"%s","messages":[{"role":"user","content":"%s"}]}' % (
        MODEL.encode(),
        b"a" * (200 << 10),
    )
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (seeded.api_key.encode(), len(body), body)
    )
    line = await asyncio.wait_for(reader.readline(), 5.0)
    assert line.startswith(b"HTTP/1.1 ") and b" 431 " not in line, line
    writer.close()


@pytest.fixture
def gateway_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    gateway_settings.header_timeout_s = 2.0
    gateway_settings.write_timeout_s = 1.0
    return gateway_settings


async def test_slowloris_connections_delay_nobody_and_are_cut_at_the_header_deadline(
    gateway: RunningGateway, seeded: Seeded
) -> None:
    host, port = address(gateway)
    baseline = min([await timed_models(gateway, seeded.api_key) for _ in range(3)])
    trickling: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(200):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickling.append((reader, writer))
    started = time.monotonic()
    try:
        for _ in range(3):  # one byte per connection every 0.3 s: never a complete header
            for _, writer in trickling:
                writer.write(b"a")
            latency = await timed_models(gateway, seeded.api_key)
            assert latency < baseline + 0.5, (latency, baseline)
            await asyncio.sleep(0.3)
        # The header deadline (2 s here) ends them all: 408, then closed.
        statuses = await asyncio.gather(*(status_of(reader, 5.0) for reader, _ in trickling))
        assert set(statuses) == {408}
        assert time.monotonic() - started < 2.0 + 2.5
    finally:
        for _, writer in trickling:
            writer.close()


async def test_a_stalled_reader_releases_its_instance_slot_after_the_write_deadline(
    start_gateway: Callable[[], Awaitable[RunningGateway]],
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
) -> None:
    gateway_settings.max_inflight_per_gpu = 1  # one slot: the next request needs it back
    gateway_settings.queue_deadline_s = 10.0
    gateway = await start_gateway()
    engine = await engines.start("a")
    engine.behaviour.tokens = 200_000  # far more than socket buffers hold
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    host, port = address(gateway)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": true}' % (
        MODEL.encode()
    )
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + seeded.api_key.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    # ... and never reads again. The slot comes back once a write waited 1 s for it.
    started = time.monotonic()
    engine.behaviour.tokens = 3  # for the next request
    try:
        async with gateway.client(seeded.api_key) as client:
            response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 1.0 + 5.0
        await wait_for(lambda: engine.active == 0)  # the engine is not held either
    finally:
        writer.close()


async def test_concurrent_requests_per_key_are_capped(
    start_gateway: Callable[[], Awaitable[RunningGateway]],
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    sessionmaker,  # type: ignore[no-untyped-def]
    engines: Engines,
    registry: Registry,
) -> None:
    from tests.gateway.conftest import add_key

    gateway_settings.max_concurrent_per_key = 2
    gateway = await start_gateway()
    engine = await engines.start("a")
    engine.behaviour.hold = asyncio.Event()
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    other_key, _ = await add_key(sessionmaker, seeded.project.id)
    async with gateway.client(seeded.api_key) as client, gateway.client(other_key) as other:
        held = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in "ab"]
        await wait_for(lambda: len(engine.requests) == 2)
        third = await client.post("/v1/chat/completions", json=CHAT)
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "concurrency_limit_exceeded"
        other_task = asyncio.create_task(other.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: len(engine.requests) == 3)  # another key is not held back
        engine.behaviour.hold.set()
        assert [r.status_code for r in await asyncio.gather(*held, other_task)] == [200] * 3
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_connections_per_client_address_are_capped(
    start_gateway: Callable[[], Awaitable[RunningGateway]],
    gateway_settings: GatewaySettings,
    seeded: Seeded,
) -> None:
    gateway_settings.max_connections_per_client = 5
    gateway = await start_gateway()
    host, port = address(gateway)
    opened = [await asyncio.open_connection(host, port) for _ in range(5)]
    try:
        reader, writer = await asyncio.open_connection(host, port)
        assert await status_of(reader, 2.0) == 429
        writer.close()
    finally:
        for _, w in opened:
            w.close()
    await asyncio.sleep(0.2)
    assert await timed_models(gateway, seeded.api_key) < 2.0  # freed when they closed


async def test_an_unreachable_engine_is_not_named_to_the_client(
    gateway: RunningGateway, seeded: Seeded, registry: Registry
) -> None:
    port = free_port()  # nothing listens there
    await registry.put(registry.instance(f"http://127.0.0.1:{port}"))
    await wait_for(lambda: serving(gateway.app, MODEL))
    async with gateway.client(seeded.api_key) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "engine_unreachable"
    assert str(port) not in response.text and "127.0.0.1" not in response.text


async def test_metrics_need_the_scrape_token(
    start_gateway: Callable[[], Awaitable[RunningGateway]],
    gateway_settings: GatewaySettings,
) -> None:
    local = await start_gateway()  # no token set: this machine only (the test is local)
    async with httpx.AsyncClient(base_url=local.url) as client:
        assert (await client.get("/metrics")).status_code == 200
    gateway_settings.metrics_token = SecretStr("scrape-secret")
    guarded = await start_gateway()
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert right.status_code == 200
        assert b"inventiv_gateway_requests" in right.content
