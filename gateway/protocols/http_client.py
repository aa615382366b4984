"""A lean HTTP/1.1 client for proxying to engines: asyncio protocol + httptools, pooled per host.

httpx costs several times more CPU per request than the proxying itself; this client writes the
request in one buffer, parses the response with httptools (C), and hands body bytes over as they
arrive, so streams pass through chunk by chunk. One connection carries one request at a time.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast
from urllib.parse import urlsplit

import httptools

# Stop reading from the engine while this much response data waits for a slow client.
_PAUSE_ABOVE = 256 * 1024


class UpstreamError(Exception):
    """The engine could not be reached, or the connection broke."""

    def __init__(self, message: str, *, before_first_byte: bool, reused: bool = False) -> None:
        super().__init__(message)
        self.before_first_byte = before_first_byte
        # Failed on a pooled keep-alive connection the engine may have closed: retry on a new one.
        self.reused = reused


class UpstreamResponse:
    """A response being received: status and headers first, then body chunks."""

    __slots__ = ("_conn", "content_type", "finished", "status")

    def __init__(self, conn: _Connection, status: int, content_type: bytes) -> None:
        self._conn = conn
        self.status = status
        self.content_type = content_type
        self.finished = False

    async def _wait_body(self, timeout: float | None = None) -> bool:
        """Wait for more body; False when `timeout` passed first."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        waiter = conn.body_waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            timed_out = await waiter
        except BaseException:
            self.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return not timed_out

    async def read_all(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            # The whole body is wanted: flow control must not stop it half-way.
            conn.buffered = 0
            if conn.reading_paused and conn.transport is not None:
                conn.reading_paused = False
                conn.transport.resume_reading()
            await self._wait_body()
        body = b"".join(conn.chunks)
        conn.chunks.clear()
        self.finished = True
        conn.release()
        return body

    async def next_chunk(self, timeout: float | None = None) -> bytes | None:
        """The body received since the last call as soon as there is some, None at the end,
        or b"" when `timeout` passed with nothing new."""
        conn = self._conn
        while not conn.chunks:
            if conn.complete:
                self.finished = True
                conn.release()
                return None
            if not await self._wait_body(timeout):
                return b""
        data = b"".join(conn.chunks) if len(conn.chunks) > 1 else conn.chunks[0]
        conn.chunks.clear()
        conn.buffered = 0
        if conn.reading_paused and conn.transport is not None:
            conn.reading_paused = False
            conn.transport.resume_reading()
        return data

    def abort(self) -> None:
        """Close the connection unless the response was read in full: the engine sees the
        client go and cancels the request."""
        if not self.finished:
            self.finished = True
            self._conn.close()


def _time_out(waiter: asyncio.Future[bool | None]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self.in_use = False
        self.keep_alive = True
        self.headers_waiter: asyncio.Future[None] | None = None
        self.body_waiter: asyncio.Future[bool | None] | None = None
        self.status = 0
        self.content_type = b""
        self.headers_done = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.reading_paused = False
        self.error: UpstreamError | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"invalid response from engine: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.complete and self.in_use:
            self._fail("engine closed the connection")

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.content_type = b""
        self.headers_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_ABOVE and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        self.complete = True
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- helpers
    def _fail(self, message: str) -> None:
        error = UpstreamError(message, before_first_byte=not self.headers_done, reused=self.used)
        self.error = error
        for waiter in (self.headers_waiter, self.body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.pool.forget(self)

    def release(self) -> None:
        """Back to the pool once the response was read in full."""
        if not self.in_use:
            return
        self.in_use = False
        if (
            self.closed
            or not self.keep_alive
            or not self.complete
            or len(self.pool.idle) >= self.pool.max_idle
        ):
            self.close()
            return
        self.used = True
        self.pool.idle.append(self)

    async def request(self, head: bytes, body: bytes) -> UpstreamResponse:
        assert self.transport is not None
        self.in_use = True
        self.error = None
        self.headers_done = False
        self.complete = False
        self.chunks.clear()
        self.buffered = 0
        self.body_waiter = None
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        if self.error is not None:
            raise self.error
        if not self.headers_done:
            # Awaited here, not in a helper coroutine: every frame between the task and this
            # future is resumed on each wake-up, so the chain is kept short.
            waiter = self.headers_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            except BaseException:
                self.close()
                raise
            finally:
                self.headers_waiter = None
        return UpstreamResponse(self, self.status, self.content_type)


class HostPool:
    """Keep-alive connections to one engine (host:port)."""

    def __init__(
        self, base_url: str, connect_timeout: float, max_idle: int, auth: bytes | None = None
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", ""):
            raise ValueError(f"unsupported engine URL scheme: {base_url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/").encode()
        self.host_header = f"{self.host}:{self.port}".encode()
        self.auth = auth  # the Authorization header's value (the engine's API key), if any
        self._auth_line = b"" if auth is None else b"\r\nAuthorization: " + auth
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: collections.deque[_Connection] = collections.deque()

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to engine {self.host}:{self.port}: {exc}", before_first_byte=True
            ) from exc
        if conn.transport is None:
            conn.transport = cast(asyncio.Transport, transport)
        return conn

    def head(self, method: bytes, path: bytes, body: bytes) -> bytes:
        """Request line and headers for `body` (JSON) on this engine."""
        return b"".join(
            (
                method,
                b" ",
                self.base_path,
                path,
                b" HTTP/1.1\r\nHost: ",
                self.host_header,
                self._auth_line,
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
            )
        )

    def idle_connection(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return None

    async def request(self, method: bytes, path: bytes, body: bytes) -> UpstreamResponse:
        """Send one request; returns once the status line and headers arrived."""
        head = self.head(method, path, body)
        conn = self.idle_connection()
        while conn is not None:
            try:
                return await conn.request(head, body)
            except UpstreamError as exc:
                if not (exc.reused and exc.before_first_byte):
                    raise
                # The engine closed this idle connection as we reused it: try another.
            conn = self.idle_connection()
        conn = await self._connect()
        return await conn.request(head, body)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamClient:
    """One pool per engine base URL and API key."""

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.pools: dict[tuple[str, bytes | None], HostPool] = {}

    def pool(self, base_url: str, auth: bytes | None = None) -> HostPool:
        pool = self.pools.get((base_url, auth))
        if pool is None:
            pool = self.pools[(base_url, auth)] = HostPool(
                base_url, self.connect_timeout, self.max_idle, auth
            )
        return pool

    def drop(self, base_url: str) -> None:
        for key in [key for key in self.pools if key[0] == base_url]:
            self.pools.pop(key).close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
