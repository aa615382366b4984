"""A minimal Redis client for the hot path: one connection, automatic pipelining.

The rate-limit script runs once per request. With redis-py each call costs a pool checkout, a
retry wrapper, command packing and its own socket write; here every call made during one event-
loop turn goes out in a single write and the replies are parsed in one pass, so the per-request
cost is a few microseconds. Only what the gateway needs: EVALSHA (loading the script on NOSCRIPT),
AUTH and SELECT from the URL, redis:// and unix:// URLs.

Every call is bounded: connecting by `connect_timeout_s`, each reply by `reply_timeout_s` (a
hung server, e.g. stopped, raises redis' TimeoutError and drops the connection, so the next call
starts afresh instead of queueing behind replies that may never come).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = int | bytes | list["Reply"] | None


class RedisReplyError(RedisError):
    """Redis answered with an error (-ERR ...)."""


def _encode(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_INCOMPLETE = object()


def _parse(buffer: bytes, at: int) -> tuple[object, int]:
    """One reply from buffer[at:]; (_INCOMPLETE, at) when more bytes are needed."""
    end = buffer.find(b"\r\n", at)
    if end < 0:
        return _INCOMPLETE, at
    kind = buffer[at : at + 1]
    line = buffer[at + 1 : end]
    after = end + 2
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line, after
    if kind == b"-":
        return RedisReplyError(line.decode(errors="replace")), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, at
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items: list[object] = []
        for _ in range(count):
            item, after = _parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, at
            items.append(item)
        return items, after
    raise RedisReplyError(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[object]] = collections.deque()
        self.buffer = b""
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        at = 0
        while at < len(buffer):
            reply, after = _parse(buffer, at)
            if reply is _INCOMPLETE:
                break
            at = after
            future = self.waiting.popleft()
            if not future.done():
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        self.buffer = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, command: bytes) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.outgoing.append(command)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and not self.lost and self.outgoing:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing = []


class PipelinedRedis:
    def __init__(
        self, url: str, connect_timeout_s: float = 1.0, reply_timeout_s: float = 0.5
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            raise ValueError(f"unsupported Redis URL scheme for the fast client: {parts.scheme}")
        query = parse_qs(parts.query)
        self.path = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        db = query.get("db", [""])[0] or (parts.path.strip("/") if parts.scheme == "redis" else "")
        self.db = int(db) if db else 0
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._scripts: dict[str, bytes] = {}

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    if self.path is not None:
                        _, protocol = await loop.create_unix_connection(_Protocol, self.path)
                    else:
                        _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            except TimeoutError:
                raise RedisTimeoutError(
                    f"no Redis connection within {self.connect_timeout_s} s"
                ) from None
            self._protocol = protocol
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                await self._reply(protocol, _encode(b"AUTH", *auth))
            if self.db:
                await self._reply(protocol, _encode(b"SELECT", self.db))
            return protocol

    async def _reply(self, protocol: _Protocol, command: bytes) -> Reply:
        future = protocol.send(command)
        # A timer handle, not wait_for: this runs once per rate-limited request.
        timer = asyncio.get_running_loop().call_later(
            self.reply_timeout_s, self._timed_out, protocol, future
        )
        try:
            return cast(Reply, await future)
        finally:
            timer.cancel()

    def _timed_out(self, protocol: _Protocol, future: asyncio.Future[object]) -> None:
        if future.done():
            return
        future.set_exception(RedisTimeoutError(f"no Redis reply within {self.reply_timeout_s} s"))
        # Replies come in order: after a lost one, this connection cannot be trusted.
        protocol.lost = True
        if protocol.transport is not None:
            protocol.transport.abort()

    def script(self, source: str) -> str:
        """Register a Lua script; returns its SHA1 for evalsha."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source.encode()
        return sha

    async def evalsha(self, sha: str, keys: list[str], args: list[str | int]) -> Reply:
        protocol = await self._connection()
        command = _encode(b"EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self._reply(protocol, command)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._reply(protocol, _encode(b"SCRIPT", b"LOAD", self._scripts[sha]))
        return await self._reply(protocol, command)

    async def command(self, *parts: bytes | str | int) -> Reply:
        protocol = await self._connection()
        return await self._reply(protocol, _encode(*parts))

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
