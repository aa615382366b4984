"""The lean HTTP server at the wire level: malformed requests, pipelining, chunked uploads."""

from __future__ import annotations

import asyncio
import gc

import orjson

from gateway.protocols import http_server
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, serving
from tests.gateway.test_api import wait_for


async def exchange(gateway: RunningGateway, raw: bytes, responses: int = 1) -> bytes:
    """Send raw bytes; read until `responses` complete responses or the server closes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    data = b""
    try:
        while data.count(b"HTTP/1.1 ") < responses or not _complete(data, responses):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    return data


def _complete(data: bytes, responses: int) -> bool:
    parts = data.split(b"HTTP/1.1 ")[1:]
    if len(parts) < responses:
        return False
    last = parts[-1]
    head, _, body = last.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


async def test_malformed_http_gets_400_not_a_crash(gateway: RunningGateway) -> None:
    data = await exchange(gateway, b"NONSENSE \x00\x01 garbage\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b'"error"' in data
    # The server is still fine for the next client.
    data = await exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")


async def test_pipelined_requests_are_answered_in_order(gateway: RunningGateway) -> None:
    raw = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = await exchange(gateway, raw, responses=3)
    statuses = [part[:3] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200", b"404", b"200"]


async def test_a_request_leaves_no_reference_cycle_behind(gateway: RunningGateway) -> None:
    """Each request's objects are freed as it ends, not by the garbage collector: a cycle per
    request set off a collection every ~75 requests, a stall of the request it fell on."""
    gc.collect()
    gc.disable()
    try:
        raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3
        data = await exchange(gateway, raw, responses=3)
        assert data.count(b"HTTP/1.1 200 ") == 3
        await asyncio.sleep(0.1)  # the server's side of the connection ends too
        # type(), not isinstance(): other tests leave Temporal sandbox proxies that refuse it.
        left = [o for o in gc.get_objects() if type(o) is http_server._Cycle]
        assert left == []
    finally:
        gc.enable()


async def test_chunked_request_body_and_oversized_body(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    half = len(body) // 2
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + seeded.api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    )
    data = await exchange(gateway, raw)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert engine.requests[0].body["messages"] == [{"role": "user", "content": "hi"}]

    huge = 33 * 1024 * 1024
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + seeded.api_key.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % huge
    ) + b" " * huge
    data = await exchange(gateway, raw)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert len(engine.requests) == 1


async def test_expect_100_continue_is_answered(gateway: RunningGateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Authorization: Bearer sk-inv-nope\r\nContent-Length: 2\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"{}")
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert final.startswith(b"HTTP/1.1 401 ")
    writer.close()
