"""The API's HTTP edge under `inventiv api`: uvicorn with h11 (whose header buffer is bounded while
it fills, unlike httptools under uvicorn) and deadlines uvicorn lacks, plus limits on what the
headers may hold. The request-body cap (413 before any JSON is parsed) is api.body_limit's,
inside the app.

- a header block over `api_max_header_bytes` is refused by h11 (400, then close);
- more than `api_max_headers` headers: 431; a request target over `api_max_request_line_bytes`:
  414 (checked before the app runs);
- a request whose header block has not arrived within `api_header_timeout_s` of its first byte
  (or of the connection, for one that sends nothing) gets 408 and is closed; a body not received
  within `api_body_timeout_s`: 408 too;
- a response the client stops reading (the write buffer stays over its high-water mark for
  `api_write_timeout_s`) drops the connection;
- more than `api_max_concurrency` connections or requests at once: 503 (uvicorn).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.settings import Settings


class HeaderLimits:
    """Pure ASGI: header count and request-target length, before anything else reads them."""

    def __init__(self, app: ASGIApp, max_headers: int, max_target_bytes: int) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_target_bytes = max_target_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
            if target > self.max_target_bytes:
                await _refuse(send, 414, "request target too long")
                return
            if len(scope["headers"]) > self.max_headers:
                await _refuse(send, 431, f"more than {self.max_headers} request headers")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body deadline and a write deadline."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0
    write_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: type[h11.Request] | type[h11.Data] | None = None
        self._stalled: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: the app's next send waits for the
        # client to read. A client that never does is dropped, so it holds no slot for ever.
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.write_timeout_s, self._stalled_reader)

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().resume_writing()

    def _stalled_reader(self) -> None:
        self._stalled = None
        self.transport.abort()  # close() would wait for the buffer to drain

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(h11.Request)  # a connection that sends nothing is not kept for ever

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm(h11.Request)  # the first byte of the next request on this connection
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._waiting_for is not h11.Data:
            self._arm(h11.Data)  # headers in: the body's deadline now
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the request arrived in full

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()  # keep-alive: uvicorn's idle timeout takes over

    def _arm(self, waiting_for: type[h11.Request] | type[h11.Data]) -> None:
        self._disarm()
        self._waiting_for = waiting_for
        timeout = self.header_timeout_s if waiting_for is h11.Request else self.body_timeout_s
        self._deadline = self.loop.call_later(timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = None

    def _late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            what = "headers" if self._waiting_for is h11.Request else "body"
            body = f'{{"detail":"request {what} not received in time"}}'.encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()


def server_config(app: ASGIApp, settings: Settings, port: int | None = None) -> uvicorn.Config:
    """The uvicorn configuration `inventiv api` serves the API with."""
    protocol = type(
        "ApiH11Protocol",
        (DeadlineH11Protocol,),
        {
            "header_timeout_s": settings.api_header_timeout_s,
            "body_timeout_s": settings.api_body_timeout_s,
            "write_timeout_s": settings.api_write_timeout_s,
        },
    )
    return uvicorn.Config(
        HeaderLimits(app, settings.api_max_headers, settings.api_max_request_line_bytes),
        host=settings.host,
        port=settings.api_port if port is None else port,
        http=protocol,
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
        limit_concurrency=settings.api_max_concurrency,
        log_level="warning",
        proxy_headers=False,  # the app believes forwarded headers from INVENTIV_TRUSTED_PROXIES only
    )
