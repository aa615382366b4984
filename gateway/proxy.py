"""The proxy path of one request: admit (key, concurrency cap, body, model within the key's
project, rate limit with its token reservation), acquire an instance of that deployment, forward
(with the instance's engine API key), retry once elsewhere when the engine could not answer,
relay the answer (as it arrives, for streams), then book it (gateway.accounting). Everything
known about the request along the way lives on one `ProxyRequest`. What the client sees of a
failure never names an engine's address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from core.wire import RoutingStrategy
from gateway import metrics
from gateway.accounting import DATA_EVENT, USAGE, Accounting, count_usage, in_band_error, take_usage
from gateway.asgi import JSON_HEADERS, Message, Receive, Scope, Send, read_body, respond
from gateway.deployments import DeploymentMap
from gateway.errors import (
    GatewayError,
    bad_request,
    error_body,
    model_not_found,
    unavailable,
    warn_at_most_every,
)
from gateway.keys import KeyCache, KeyInfo
from gateway.protocols.http_client import UpstreamClient, UpstreamError, UpstreamResponse
from gateway.protocols.http_server import DISCONNECT_EXTENSION
from gateway.ratelimit import RateLimiter
from gateway.routing import Backend, Router
from gateway.settings import GatewaySettings
from gateway.tracing import RequestTraces

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE = b": keep-alive\n\n"

log = logging.getLogger("inventiv.gateway")
_NO_EXTENSIONS: dict[str, Any] = {}


@dataclass(slots=True, frozen=True)
class ProxyRoute:
    engine_path: bytes
    required: str  # the field that must be present besides "model"


PROXY_ROUTES: dict[str, ProxyRoute] = {
    "/v1/chat/completions": ProxyRoute(b"/v1/chat/completions", "messages"),
    "/v1/completions": ProxyRoute(b"/v1/completions", "prompt"),
    "/v1/embeddings": ProxyRoute(b"/v1/embeddings", "input"),
}


@dataclass(slots=True, eq=False)
class ProxyRequest:
    """One proxied request: what the client asked (read by the routing strategy too) and, as it
    goes, where it went and how it ended (read by accounting)."""

    key: KeyInfo
    model: str
    deployment_id: str  # the key's project's deployment serving `model`
    engine_path: bytes
    body: bytes  # as forwarded to the engine
    payload: dict[str, Any]  # the parsed JSON body
    headers: list[tuple[bytes, bytes]]  # the client's
    routing: RoutingStrategy
    started: float  # perf_counter
    stream: bool = False
    wants_usage: bool = True  # the client asked for the usage chunk of a stream
    # How it went
    status: int = 0
    backend: Backend | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    first_chunk_at: float | None = None
    streamed: bool = False
    relayed_events: int = 0  # content chunks sent to the client (charged when no usage came)
    reserved: int = 0  # TPM tokens reserved at admission, settled by accounting
    reserved_second: int = 0
    limit_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # The gateway's own time (`x-inventiv-overhead-ms`): everything but waiting for the engine
    # and for capacity in the queue, until the response starts.
    sent_at: float = 0.0  # perf_counter when the request went to the engine (last attempt)
    waited_s: float = 0.0  # engine attempts that failed, and the queue
    overhead_s: float | None = None  # set when the response starts


class Proxy:
    def __init__(
        self,
        config: GatewaySettings,
        keys: KeyCache,
        limiter: RateLimiter,
        router: Router,
        deployments: DeploymentMap,
        upstream: UpstreamClient,
        accounting: Accounting,
        traces: RequestTraces | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.limiter = limiter
        self.router = router
        self.deployments = deployments
        self.upstream = upstream
        self.accounting = accounting
        self.traces = traces  # None when tracing is off: not a single span object then
        self.active: dict[str, int] = {}  # key id -> requests in flight (this process)

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute) -> None:
        # One coroutine from the key check to the booking: each layer is paid on every request.
        started = time.perf_counter()
        key = await self.keys.authenticate(scope["headers"])
        key_id = key.id
        active = self.active.get(key_id, 0)
        cap = self.config.max_concurrent_per_key
        if cap and active >= cap:
            raise GatewayError(
                429,
                f"Too many requests in flight for this key (at most {cap}); retry when one ends.",
                type_="requests",
                code="concurrency_limit_exceeded",
                headers=[(b"retry-after", b"1")],
            )
        self.active[key_id] = active + 1
        try:
            body = await read_body(receive)
            payload = _parse_request(body, route.required)
            model: str = payload["model"]
            stream = payload.get("stream") is True
            if stream and route.engine_path == b"/v1/embeddings":
                raise bad_request("Embeddings cannot be streamed.", "stream")
            deployment_id, routing = self._resolve(key.project_id, model)
            request = ProxyRequest(
                key,
                model,
                deployment_id,
                route.engine_path,
                body,
                payload,
                scope["headers"],
                routing,
                started,
                stream=stream,
                streamed=stream,
            )
            if stream:
                options = payload.get("stream_options")
                request.wants_usage = (
                    isinstance(options, dict) and options.get("include_usage") is True
                )
                if not request.wants_usage:
                    # Ask the engine for usage anyway (token accounting); the extra chunk is
                    # removed.
                    payload["stream_options"] = {
                        **(options if isinstance(options, dict) else {}),
                        "include_usage": True,
                    }
                    request.body = orjson.dumps(payload)
            counters = self.router.queue(deployment_id).counters
            counters.arrivals += 1

            # From here the client may leave at any time: cancel whatever we wait for.
            task = asyncio.current_task()
            assert task is not None
            gone = False

            def on_disconnect() -> None:
                nonlocal gone
                gone = True
                task.cancel()

            # The lean server calls back when the connection drops; under another ASGI server a
            # task waits for the http.disconnect message.
            register: Callable[[Callable[[], None] | None], None] | None = scope.get(
                "extensions", _NO_EXTENSIONS
            ).get(DISCONNECT_EXTENSION)
            watcher: asyncio.Future[Message] | None = None
            if register is not None:
                register(on_disconnect)
            else:
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(
                    lambda done: (
                        on_disconnect()
                        if not done.cancelled()
                        and done.exception() is None
                        and done.result().get("type") == "http.disconnect"
                        else None
                    )
                )
            try:
                if key.limited:
                    await self._check_rate_limit(request)
                await self._forward(request, send)
            except asyncio.CancelledError:
                if not gone:
                    raise
                task.uncancel()
                request.status = 499
            except GatewayError as exc:
                request.status = exc.status
                headers = exc.headers + request.limit_headers + JSON_HEADERS
                await respond(send, exc.status, exc.body(), headers)
            finally:
                if register is not None:
                    register(None)
                elif watcher is not None:
                    watcher.cancel()
                self.accounting.finish(request)
                # The autoscaler's token-based demand: what the finished requests used.
                counters.prompt_tokens += request.input_tokens
                counters.output_tokens += request.output_tokens
                if self.traces is not None:
                    self.traces.record(request)
        finally:
            left = self.active[key_id] - 1
            if left:
                self.active[key_id] = left
            else:
                del self.active[key_id]

    def _resolve(self, project_id: str, model: str) -> tuple[str, RoutingStrategy]:
        """The deployment of the key's project serving `model` and its strategy, or 404 when
        none does (another project's model answers exactly like an unknown one). The registry
        knows deployments with a ready instance; the deployment map the others."""
        deployment_id = self.router.registry.deployment_of(project_id, model)
        if deployment_id is not None:
            backends = self.router.by_deployment.get(deployment_id)
            if backends:
                return deployment_id, backends[0].info.routing
        entry = self.deployments.get(project_id, model)
        if entry is None:
            raise model_not_found(model)
        return entry.id, entry.routing

    async def _check_rate_limit(self, request: ProxyRequest) -> None:
        key = request.key
        reserve = (
            0
            if key.tpm_limit is None
            else tokens_to_reserve(request.payload, self.config.tpm_default_reserve)
        )
        try:
            decision = await self.limiter.admit(key.id, key.rpm_limit, key.tpm_limit, reserve)
        except (RedisError, OSError) as exc:
            # Fail open: an outage of the limiter (down, or no reply within
            # redis_reply_timeout_s) must not stop inference.
            warn_at_most_every(10, "ratelimit", "rate limiter unavailable (%s); admitting", exc)
            return
        request.reserved = decision.reserved
        request.reserved_second = decision.reserved_second
        request.limit_headers = decision.headers(key.rpm_limit, key.tpm_limit)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(decision.limited_by or "requests").inc()
            limit = key.rpm_limit if decision.limited_by == "requests" else key.tpm_limit
            unit = "requests" if decision.limited_by == "requests" else "tokens"
            raise GatewayError(
                429,
                f"Rate limit reached: {limit} {unit} per minute for this key. "
                f"Retry after {decision.retry_after_s} s.",
                type_=unit,
                code="rate_limit_exceeded",
                headers=[(b"retry-after", str(decision.retry_after_s).encode())],
            )

    async def _wait_for_backend(self, request: ProxyRequest) -> Backend:
        """The slow path of `_forward`'s acquire: no instance free now, wait in the queue."""
        model = request.model
        deployment_id = request.deployment_id
        backend = await self.router.wait(
            deployment_id, request.key.id, request, self.config.queue_deadline_s
        )
        if backend is None:
            ready = bool(self.router.by_deployment.get(deployment_id))
            raise unavailable(
                f"No capacity for model '{model}' right now"
                + ("" if ready else " (its instances are starting)")
                + "; retry later.",
                1 if ready else 5,
            )
        return backend

    async def _forward(self, request: ProxyRequest, send: Send) -> None:
        model = request.model
        # The fast path without a coroutine of its own: an instance free right away.
        backend = self.router.acquire_now(request.deployment_id, request)
        if backend is None:
            queued_at = time.perf_counter()
            backend = await self._wait_for_backend(request)
            request.waited_s += time.perf_counter() - queued_at
        retried = False
        try:
            while True:
                request.backend = backend
                request.sent_at = time.perf_counter()
                try:
                    response = await self.upstream.pool(
                        backend.info.engine_url, backend.engine_auth
                    ).request(b"POST", request.engine_path, request.body)
                except UpstreamError as exc:
                    metrics.UPSTREAM_ERRORS.labels(model, "connect").inc()
                    failed_with: UpstreamResponse | None = None
                    error: Exception = exc
                else:
                    if response.status < 500:
                        break
                    metrics.UPSTREAM_ERRORS.labels(model, "5xx").inc()
                    failed_with = response
                    error = UpstreamError(
                        f"engine answered {response.status}", before_first_byte=True
                    )
                if self.router.record_failure(backend):
                    metrics.EJECTIONS.labels(backend.info.model).inc()
                alternative = (
                    None if retried else self.router.pick(request.deployment_id, request, backend)
                )
                if alternative is None:
                    if failed_with is not None:
                        response = failed_with  # nothing else to try: pass the engine's answer on
                        break
                    # The address stays in the log: the client learns nothing of the network.
                    warn_at_most_every(
                        10, f"unreachable:{backend.instance_id}", "engine of %s: %s", model, error
                    )
                    raise GatewayError(
                        502,
                        f"The engine serving '{model}' could not be reached; retry shortly.",
                        type_="upstream_error",
                        code="engine_unreachable",
                    )
                if failed_with is not None:
                    failed_with.abort()
                request.waited_s += time.perf_counter() - request.sent_at
                self.router.release(backend)
                metrics.RETRIES.labels(model).inc()
                backend, retried = alternative, True

            request.status = response.status
            try:
                if (
                    request.stream
                    and response.status == 200
                    and response.content_type.startswith(b"text/event-stream")
                ):
                    request.streamed = True
                    await self._relay_stream(request, response, send)
                else:
                    request.streamed = False
                    await self._relay_whole(request, response, send)
                # A stream counts once it ended without an error event.
                if request.status < 500 and backend.consecutive_failures:
                    self.router.record_success(backend)
            finally:
                # Not read to the end (the client left, or stopped reading): the engine stops.
                response.abort()
        finally:
            self.router.release(backend)

    async def _relay_whole(
        self, request: ProxyRequest, response: UpstreamResponse, send: Send
    ) -> None:
        try:
            data = await response.read_all()
        except UpstreamError as exc:
            metrics.UPSTREAM_ERRORS.labels(request.model, "broken").inc()
            raise GatewayError(
                502,
                f"The engine serving '{request.model}' failed while answering.",
                type_="upstream_error",
                code="engine_failed",
            ) from exc
        answered_at = time.perf_counter()
        if response.status == 200:
            count_usage(data, request)
        headers = [
            (b"content-type", response.content_type or b"application/json"),
            _overhead_header(request, answered_at),
        ]
        await respond(send, response.status, data, headers + request.limit_headers)

    async def _relay_stream(
        self, request: ProxyRequest, response: UpstreamResponse, send: Send
    ) -> None:
        """Pass SSE events on as they arrive. Complete events only (so the usage chunk can be
        read and, if the client did not ask for it, removed); keep-alive comments while the
        first token is slow."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_SSE_HEADERS,
                    _overhead_header(request),
                    *request.limit_headers,
                ],
            }
        )
        keepalive = self.config.keepalive_interval_s
        pending = b""
        try:
            while True:
                chunk = await response.next_chunk(
                    keepalive if request.first_chunk_at is None else None
                )
                if chunk is None:
                    break
                if not chunk:
                    await send(
                        {"type": "http.response.body", "body": _KEEPALIVE, "more_body": True}
                    )
                    continue
                if request.first_chunk_at is None:
                    request.first_chunk_at = time.perf_counter()
                data = pending + chunk if pending else chunk
                end = max(data.rfind(b"\n\n") + 2, data.rfind(b"\r\n\r\n") + 4)
                if end < 4:
                    pending = data
                    continue
                events, pending = data[:end], data[end:]
                if USAGE.search(events) is not None:
                    events = take_usage(events, request.wants_usage, request)
                if request.status == 200 and (status := in_band_error(events)) is not None:
                    self._failed_in_band(request, status)
                if events:
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                    request.relayed_events += events.count(DATA_EVENT)
        except UpstreamError:
            # Too late to retry: the client already has part of the answer. End the stream with
            # an error event it can see, without the torn half of an event the engine left.
            metrics.UPSTREAM_ERRORS.labels(request.model, "stream").inc()
            request.status = 502
            message = "The engine's stream broke."
            pending = b"data: " + error_body(message, "upstream_error", "stream_broken") + b"\n\n"
        await send({"type": "http.response.body", "body": pending, "more_body": False})

    def _failed_in_band(self, request: ProxyRequest, status: int) -> None:
        """An error event after the 200 (vLLM's way inside a stream): an error like a 5xx,
        for the request log, the metrics and passive health."""
        request.status = status
        metrics.UPSTREAM_ERRORS.labels(request.model, "in_band").inc()
        if request.backend is not None and self.router.record_failure(request.backend):
            metrics.EJECTIONS.labels(request.model).inc()


def _overhead_header(
    request: ProxyRequest, answered_at: float | None = None
) -> tuple[bytes, bytes]:
    """The time the request spent in the gateway until its response starts: before it went to
    the engine (queue waits and failed attempts left out) and, for a whole answer, since it
    arrived (`answered_at`). A stream's head is relayed as it comes."""
    overhead = request.sent_at - request.started - request.waited_s
    if answered_at is not None:
        overhead += time.perf_counter() - answered_at
    request.overhead_s = overhead
    return b"x-inventiv-overhead-ms", b"%.3f" % (overhead * 1000)


def tokens_to_reserve(payload: dict[str, Any], default: int) -> int:
    """Tokens to reserve against the TPM limit: the output the request allows (the larger of
    max_tokens and max_completion_tokens, integers only: JSON's true is no count), else
    `default`."""
    # On every request of a key with a TPM limit: plain tests, about a quarter of the cost of a
    # comprehension. `type(...) is int` is exact for parsed JSON, whose only int subclass is bool.
    asked = payload.get("max_tokens")
    if type(asked) is not int:
        asked = None
    other = payload.get("max_completion_tokens")
    if type(other) is int and (asked is None or other > asked):
        asked = other
    return default if asked is None else asked


def _parse_request(body: bytes, required: str) -> dict[str, Any]:
    if not body:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required (a string).", "model")
    if required not in payload:
        raise bad_request(f"'{required}' is required.", required)
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise bad_request("'stream' must be a boolean.", "stream")
    return payload
