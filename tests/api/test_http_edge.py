"""The API's HTTP edge as `inventiv api` serves it (uvicorn with api/http_edge.py), over real
sockets: oversized or endless header blocks are refused within a second while others are
served, slow clients are cut at their deadlines, header count and body size are capped before
the app parses anything."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from api.app import create_app
from api.http_edge import server_config
from core.embedded import free_port
from core.events import publish_event
from core.settings import Settings
from tests.api.conftest import Tenant


@contextlib.asynccontextmanager
async def serving(settings: Settings, **limits: float) -> AsyncIterator[str]:
    """`inventiv api`'s server on a free port, with short deadlines and these limits."""
    edged = settings.model_copy(
        update={
            "api_header_timeout_s": 2.0,
            "api_body_timeout_s": 2.0,
            "host": "127.0.0.1",
            **limits,
        }
    )
    port = free_port()
    server = uvicorn.Server(server_config(create_app(edged), edged, port=port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def api_url(settings: Settings) -> AsyncIterator[str]:
    async with serving(settings) as url:
        yield url


async def status_of(reader: asyncio.StreamReader, within_s: float) -> int:
    line = await asyncio.wait_for(reader.readline(), within_s)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


async def healthz(api_url: str) -> float:
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        assert (await client.get(f"http://{api_url}/healthz")).status_code == 200
        return time.monotonic() - started


async def test_oversized_header_blocks_are_refused_within_a_second(api_url: str) -> None:
    host, port = api_url.split(":")

    async def refused(head: bytes, tail: bytes = b"") -> tuple[int, float]:
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write(head)

        async def pour() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(64):
                    writer.write(tail)
                    await writer.drain()

        pouring = asyncio.create_task(pour()) if tail else None
        try:
            return await status_of(reader, 1.0), time.monotonic() - started
        finally:
            if pouring is not None:
                pouring.cancel()
            writer.close()

    big = refused(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * (1 << 20))
    many = refused(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
        + b"\r\n"
    )
    counted = refused(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        + b"\r\n"
    )
    (big_status, big_s), (many_status, many_s), (count_status, _), served = await asyncio.gather(
        big, many, counted, healthz(api_url)
    )
    assert big_status == 400 and big_s < 1.0  # h11's bounded header buffer
    # Bounded by h11's buffer while it arrives (400), or counted once complete (431).
    assert many_status in (400, 431) and many_s < 1.0
    assert count_status == 431
    # Served meanwhile (the abusive clients share this test's event loop with the server).
    assert served < 2.0


async def test_slow_clients_are_cut_at_their_deadlines_and_delay_nobody(api_url: str) -> None:
    host, port = api_url.split(":")
    slow_headers = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        slow_headers.append((reader, writer))
    silent = await asyncio.open_connection(host, int(port))  # connects, sends nothing
    reader, slow_body = await asyncio.open_connection(host, int(port))
    slow_body.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    try:
        assert await healthz(api_url) < 2.0  # (this test's loop also runs the server)
        statuses = await asyncio.gather(
            *(status_of(r, 4.0) for r, _ in slow_headers), status_of(silent[0], 4.0)
        )
        assert set(statuses) == {408}
        assert await status_of(reader, 4.0) == 408
    finally:
        for _, writer in [*slow_headers, silent]:
            writer.close()
        slow_body.close()


async def test_a_body_over_the_cap_is_refused_before_parsing(
    api_url: str, settings: Settings
) -> None:
    too_big = b"{" + b" " * settings.max_request_body_bytes + b"}"
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{api_url}/api/v1/auth/login",
            content=too_big,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413


async def test_clients_that_stop_reading_are_dropped_and_free_their_slots(
    settings: Settings, redis_client: aioredis.Redis, alice: Tenant
) -> None:
    """Three clients follow the event stream from long ago (about 9 MB to replay) and never read:
    while they hold the server's concurrency a normal request gets 503; at the write deadline
    each is dropped, and normal requests are served again."""
    first = ""
    for n in range(3000):
        event_id = await publish_event(
            redis_client, "state", str(alice.project.id), {"n": n, "pad": "x" * 3000}
        )
        first = first or event_id
    async with serving(settings, api_write_timeout_s=1.0, api_max_concurrency=4) as api_url:
        host, port = api_url.split(":")
        request = (
            f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {alice.headers['Authorization']}\r\nLast-Event-ID: {first}\r\n\r\n"
        ).encode()

        def stalled_reader() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # a tiny window
            sock.connect((host, int(port)))
            sock.sendall(request)
            return sock

        stalled = [stalled_reader() for _ in range(3)]
        try:
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as client:
                crowded = (await client.get(f"http://{api_url}/healthz")).status_code
            assert crowded == 503, "the three streams and this request fill the 4 slots"
            served = None
            for _ in range(50):  # the deadline is 1 s: allow for a loaded machine
                await asyncio.sleep(0.2)
                async with httpx.AsyncClient() as client:
                    served = (await client.get(f"http://{api_url}/healthz")).status_code
                if served == 200:
                    break
            assert served == 200, "stalled readers still hold the server's slots"
            for sock in stalled:  # cut: after what was buffered, the connection ends
                sock.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(1 << 20):
                        pass
        finally:
            for sock in stalled:
                sock.close()
