"""A lean HTTP/1.1 server for the gateway's ASGI app: httptools parsing, one socket write per
response (status line, headers and body together), keep-alive, chunked streaming, flow control,
client-disconnect notice and graceful shutdown.

The edges hold against abusive clients (`ServerLimits`): request line, header block and header
count are bounded while they arrive (414 / 431, then close; httptools' cost for one header grows
with its size, so nothing unbounded reaches it); the header block and the body each have a
deadline (408, then close); a response write that cannot drain within its deadline drops the
connection (the app sees a disconnect and frees what it holds); connections per client address
are capped.

uvicorn serves the same app (tests, `INVENTIV_GATEWAY_SERVER=uvicorn`); this server exists
because every microsecond here is paid on every request: it skips uvicorn's middleware, per-
request bookkeeping and its separate write for the headers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("inventiv.gateway.server")

Message = MutableMapping[str, Any]
App = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]

MAX_BODY = 32 * 1024 * 1024
# ASGI scope extension: a function taking a callback (or None) run when the client disconnects,
# which spares the app a task waiting on receive() for every request.
DISCONNECT_EXTENSION = "inventiv.disconnect"
_HIGH_WATER = 256 * 1024
_SWEEP_S = 0.5  # how often deadlines and idle connections are checked
# After a refusal the server stops reading, but keeps the connection this long before closing it:
# closing at once with unread input would reset it, and the client might never see the answer.
_LINGER_S = 1.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may hold of the server; 0 turns a cap off."""

    max_request_line_bytes: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    write_timeout_s: float = 30.0
    max_connections_per_client: int = 0


class _Refused(Exception):
    """Raised from a parser callback: the request broke a limit (answered, then closed)."""

    def __init__(self, status: int, message: bytes) -> None:
        self.status = status
        self.message = message


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}
_DISCONNECT: Message = {"type": "http.disconnect"}
_RELEASED: MutableMapping[str, Any] = {}  # a started cycle's scope (the app has it)


class _Cycle:
    """One request and its response."""

    __slots__ = (
        "body",
        "body_started",
        "chunked",
        "complete",
        "conn",
        "disconnected",
        "final_delivered",
        "head",
        "keep_alive",
        "on_disconnect",
        "receive_waiter",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(
        self, conn: _Connection, scope: MutableMapping[str, Any], keep_alive: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.body_started = time.monotonic()  # the body-receive deadline counts from here
        self.complete = False
        self.final_delivered = False
        self.disconnected = False
        self.receive_waiter: asyncio.Future[None] | None = None
        self.head: bytes | None = None
        self.chunked = False
        self.response_started = False
        self.response_complete = False
        self.on_disconnect: Callable[[], None] | None = None

    def set_disconnect_callback(self, callback: Callable[[], None] | None) -> None:
        self.on_disconnect = callback

    def wake(self) -> None:
        waiter = self.receive_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            if not self.final_delivered and (self.body or self.complete):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.final_delivered = self.complete
                return {"type": "http.request", "body": body, "more_body": not self.complete}
            if not self.complete:
                self.conn.resume_reading()
            self.receive_waiter = asyncio.get_running_loop().create_future()
            await self.receive_waiter

    async def send(self, message: Message) -> None:
        conn = self.conn
        if self.disconnected or conn.transport is None:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("response already started")
            self.response_started = True
            status = int(message["status"])
            parts = [_STATUS_LINES.get(status) or _status_line(status)]
            has_length = False
            # ASGI response header names are lowercase; four parts per header joined once cost
            # about half of a formatted line each (every response).
            for name, value in message.get("headers", ()):
                if name == b"content-length":
                    has_length = True
                parts += (name, b": ", value, b"\r\n")
            if not has_length:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            parts.append(b"\r\n")
            self.head = b"".join(parts)
            return
        if kind != "http.response.body" or not self.response_started or self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
        if self.head is not None:
            data = self.head + data
            self.head = None
        if data:
            conn.transport.write(data)
        if not more:
            self.response_complete = True
            conn.response_done(self)
        elif conn.write_paused:
            await conn.drain()


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.cycle: _Cycle | None = None  # the request being answered
        self.pending: collections.deque[_Cycle] = collections.deque()  # pipelined ones
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.idle_since = time.monotonic()
        self.client: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None
        self.body_size = 0
        self.limits = server.limits
        # The header block being received: since when, bytes and headers so far.
        self.in_head = False
        self.head_started = 0.0
        self.head_bytes = 0
        self.max_headers = self.limits.max_headers or 1 << 62
        self.counted_client: str | None = None  # the address counted in server.per_client
        self.refused = False  # answered with an error: what still arrives is discarded

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server_addr = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cap = self.limits.max_connections_per_client
        if cap and self.client is not None:
            address = self.client[0]
            per_client = self.server.per_client
            if per_client.get(address, 0) >= cap:
                self._reject(429, b"Too many connections from this address.")
                return
            per_client[address] = per_client.get(address, 0) + 1
            self.counted_client = address
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        address, self.counted_client = self.counted_client, None
        if address is not None:
            left = self.server.per_client[address] - 1
            if left:
                self.server.per_client[address] = left
            else:
                del self.server.per_client[address]
        for cycle in (self.cycle, *self.pending):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
                if cycle.on_disconnect is not None and not cycle.response_complete:
                    callback, cycle.on_disconnect = cycle.on_disconnect, None
                    callback()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        limit = self.limits.max_header_bytes
        starts_head = not self.in_head
        if not starts_head:
            # Counted before parsing: an endless header never reaches the parser in full.
            self.head_bytes += len(data)
            if limit and self.head_bytes > limit:
                self._reject(431, b"Request header block too large.")
                return
        elif (
            limit
            and len(data) > limit
            and self.cycle is None
            and data.find(b"\r\n\r\n", 0, limit + 4) < 0
        ):
            # A read that starts a request (one read can hold far more than the limit): its
            # header block must end within the limit.
            self._reject(431, b"Request header block too large.")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"Upgrades are not supported.")
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is not None:
                self._reject(refused.status, refused.message)
            else:
                self._reject(400, b"Malformed HTTP request.")
        else:
            if starts_head and self.in_head:
                self.head_bytes = len(data)  # a head began in this read and goes on

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the client read enough; past the write deadline, drop the connection (a
        reader that stopped must not hold the response, and what it holds upstream, for ever)."""
        if self.write_paused and self.transport is not None:
            waiter = self.drain_waiter = self.loop.create_future()
            timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)
            try:
                await waiter
            finally:
                timer.cancel()

    def _write_timed_out(self) -> None:
        if self.write_paused and self.transport is not None:
            self.transport.abort()  # close() would wait for the unread buffer to drain

    # -- httptools
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_size = 0
        self.in_head = True
        self.head_started = time.monotonic()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _Refused(414, b"Request line too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self.max_headers:
            raise _Refused(431, b"Too many request headers.")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(),
            "scheme": "http",
            "method": self.parser.get_method().decode("ascii"),
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "root_path": "",
            "headers": self.headers,
            "client": self.client,
            "server": self.server_addr,
        }
        cycle = _Cycle(self, scope, self.parser.should_keep_alive() and not self.server.stopping)
        scope["extensions"] = {DISCONNECT_EXTENSION: cycle.set_disconnect_callback}
        if (b"expect", b"100-continue") in self.headers and self.transport is not None:
            # curl and others wait for this before sending a large body.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pending.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.pending[-1] if self.pending else self.cycle
        if cycle is None:
            return
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            self._reject(413, b"Request body too large.")
            return
        cycle.body.append(body)
        if len(cycle.body) > 16:
            self.pause_reading()  # the app reads slower than the client sends
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.pending[-1] if self.pending else self.cycle
        if cycle is not None:
            cycle.complete = True
            cycle.wake()

    # -- helpers
    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def _reject(self, status: int, message: bytes) -> None:
        if self.transport is None or self.refused:
            return
        self.in_head = False
        self.refused = True
        body = (
            b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":null}}'
            % message
        )
        self.transport.write(
            _STATUS_LINES[status]
            + b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % len(body)
            + body
        )
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()

    def _start(self, cycle: _Cycle) -> None:
        self.cycle = cycle
        task = self.loop.create_task(self._run(cycle))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, cycle: _Cycle) -> None:
        # The cycle lets go of its scope: the scope's disconnect extension is a bound method of
        # the cycle, so the two were a reference cycle (with the scope's headers and addresses,
        # ten objects a request) that only the garbage collector freed. That was a collection of
        # the young generation every ~75 requests, 0.4 ms each, a stall for the request it fell on.
        scope, cycle.scope = cycle.scope, _RELEASED
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception:
            log.exception("unhandled error in the gateway")
            if not cycle.response_started and not cycle.disconnected:
                body = b'{"error":{"message":"Internal error","type":"server_error","param":null,"code":null}}'
                await cycle.send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)),
                        ],
                    }
                )
                await cycle.send({"type": "http.response.body", "body": body})
        if not cycle.response_complete and self.transport is not None:
            # The app ended without finishing its response: the client must not wait forever.
            self.transport.close()

    def response_done(self, cycle: _Cycle) -> None:
        self.cycle = None
        self.idle_since = time.monotonic()
        if self.transport is None:
            return
        if not cycle.keep_alive:
            self.transport.close()
            return
        if self.pending:
            self._start(self.pending.popleft())
        else:
            self.resume_reading()


class LeanServer:
    def __init__(
        self,
        app: App,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        keep_alive_s: float = 75.0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.app = app
        self.startup = startup
        self.shutdown = shutdown
        self.keep_alive_s = keep_alive_s
        self.limits = limits or ServerLimits()
        self.connections: set[_Connection] = set()
        self.per_client: dict[str, int] = {}  # open connections per client address
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def serve(self, sock: socket.socket, stop: asyncio.Event, graceful_s: float) -> None:
        await self.startup()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=4096)
        sweeper = asyncio.create_task(self._sweep())
        try:
            await stop.wait()
        finally:
            self.stopping = True
            server.close()
            sweeper.cancel()
            for conn in list(self.connections):
                if conn.cycle is None and conn.transport is not None:
                    conn.transport.close()
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=graceful_s)
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self.shutdown()

    async def _sweep(self) -> None:
        """Deadlines: idle keep-alive connections, header blocks and bodies too slow to come."""
        limits = self.limits
        while True:
            await asyncio.sleep(min(_SWEEP_S, self.keep_alive_s))
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.transport is None:
                    continue
                cycle = conn.pending[-1] if conn.pending else conn.cycle
                if conn.in_head:
                    if now - conn.head_started > limits.header_timeout_s:
                        conn._reject(408, b"Request headers not received in time.")
                elif cycle is not None:
                    if not cycle.complete and now - cycle.body_started > limits.body_timeout_s:
                        if cycle.response_started:
                            conn.transport.close()
                        else:
                            conn._reject(408, b"Request body not received in time.")
                elif now - conn.idle_since > self.keep_alive_s:
                    conn.transport.close()
