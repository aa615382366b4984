"""The gateway: a lean ASGI application (no framework routing on the hot path).

Per request: API key from the in-memory cache, body parsed once with orjson, per-key rate limit
(only for keys with limits: one Redis round trip, or none while a lease of request slots lasts),
an instance chosen in memory (or a wait in the model's queue), the body forwarded on a pooled
keep-alive connection, the response passed back as it arrives, then metrics and a request-log row
appended for the batch writer. `python -m gateway` serves it with gateway.server; any ASGI server
(uvicorn in tests) can too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.redis_keys import (
    API_KEY_CHANNEL,
    INSTANCE_LOAD,
    ROUTING_CHANNEL,
    ROUTING_REGISTRY,
    gateway_load_key,
)
from core.settings import Settings
from core.wire import GatewayLoad, RegistryChange, RoutableInstance
from gateway import metrics
from gateway.errors import (
    GatewayError,
    bad_request,
    error_body,
    invalid_key,
    model_not_found,
    unavailable,
)
from gateway.keys import KeyCache, KeyInfo
from gateway.logs import RequestLogWriter
from gateway.ratelimit import RateLimiter
from gateway.routing import Backend, Router
from gateway.server import DISCONNECT_EXTENSION, MAX_BODY
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse

log = logging.getLogger("inventiv.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE = b": keep-alive\n\n"

# path -> (engine path, field that must be present besides "model")
_PROXY_ROUTES: dict[str, tuple[bytes, str]] = {
    "/v1/chat/completions": (b"/v1/chat/completions", "messages"),
    "/v1/completions": (b"/v1/completions", "prompt"),
    "/v1/embeddings": (b"/v1/embeddings", "input"),
}


class ClientGone(Exception):
    """The client closed the connection."""


@dataclass(slots=True)
class DeploymentEntry:
    id: str
    project_id: str
    session_affinity: str


@dataclass
class _Outcome:
    """What is known about a proxied request when it ends (for logs and metrics)."""

    status: int = 0
    backend: Backend | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    first_chunk_at: float | None = None
    streamed: bool = False
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Gateway:
    def __init__(self, settings: Settings, gateway_settings: GatewaySettings | None = None) -> None:
        if not settings.redis_url or not settings.database_url:
            raise ValueError("the gateway needs a Redis URL and a database URL")
        self.settings = settings
        self.config = gateway_settings or GatewaySettings()
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}"
        self.router = Router(
            max_inflight_per_gpu=self.config.max_inflight_per_gpu,
            sticky_load_factor=self.config.sticky_load_factor,
            load_stale_s=self.config.load_stale_s,
            eject_after_failures=self.config.eject_after_failures,
            eject_s=self.config.eject_s,
            queue_size=self.config.queue_size,
            on_removed=self._backend_removed,
        )
        self.upstream = UpstreamClient(connect_timeout=self.config.connect_timeout_s)
        self.session_header = self.config.session_header.lower().encode()
        self.deployments: dict[str, list[DeploymentEntry]] = {}
        self.ready = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pending_tokens: dict[str, int] = {}
        self._redis: aioredis.Redis | None = None
        self._pool: asyncpg.Pool | None = None
        self._keys: KeyCache | None = None
        self._limiter: RateLimiter | None = None
        self._logs: RequestLogWriter | None = None

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        self._redis = aioredis.Redis.from_url(self.settings.redis_url or "")
        dsn = (self.settings.database_url or "").replace("postgresql+asyncpg://", "postgresql://")
        self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        self._keys = KeyCache(
            self._pool, self.settings.api_key_cache_ttl_s, self.config.unknown_key_ttl_s
        )
        self._limiter = RateLimiter(self.settings.redis_url or "", self._redis)
        self._logs = RequestLogWriter(
            self._pool, self.config.log_batch_size, self.config.log_buffer_max
        )
        subscribed = asyncio.Event()
        loops = [
            self._follow_channels(subscribed),
            self._every(self.config.registry_refresh_s, self._reload_registry),
            self._every(self.config.load_poll_s, self._poll_instance_load),
            self._every(self.config.deployments_refresh_s, self._reload_deployments),
            self._every(self.config.load_publish_s, self._publish_load),
            self._every(5.0, self._keys.flush_last_used),
            self._every(0.25, self._flush_tokens),
            self._every(0.1, self._limiter.release_expired),
            self._logs.run(self.config.log_flush_s),
        ]
        self._tasks = [asyncio.create_task(loop) for loop in loops]
        # Subscribe before the first full read, so no change falls between the two.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        for initial in (self._reload_registry, self._reload_deployments, self._poll_instance_load):
            try:
                await initial()
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                log.warning("initial load failed (%s); retrying in the background", exc)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        self._stopping = True
        if self._logs is not None:
            self._logs.stopping = True
        for task in self._tasks:
            task.cancel()
        # Bounded: a client library that swallowed the cancellation must not block shutdown
        # (the loops also check _stopping).
        await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        try:
            await self._flush_tokens()
            if self._limiter is not None:
                await self._limiter.release_all()
            if self._logs is not None:
                await asyncio.wait_for(self._logs.flush(), 10)
            if self._keys is not None:
                await self._keys.flush_last_used()
        except (RedisError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.error("could not flush request logs at shutdown: %s", exc)
        self.upstream.close()
        if self._limiter is not None:
            self._limiter.close()
        if self._pool is not None:
            await self._pool.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def _every(self, period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            await asyncio.sleep(period_s)
            try:
                await job()
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("%s failed: %s", job.__name__, exc)

    # ------------------------------------------------------------------ following Redis/DB

    async def _follow_channels(self, subscribed: asyncio.Event) -> None:
        """Registry changes and key invalidations, pushed by the control plane."""
        assert self._redis is not None and self._keys is not None
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(ROUTING_CHANNEL, API_KEY_CHANNEL)
                # Messages may have been missed while disconnected: start from a clean slate.
                self._keys.invalidate_all()
                if subscribed.is_set():
                    await self._reload_registry()
                subscribed.set()
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    data = message["data"]
                    if channel == API_KEY_CHANNEL:
                        self._keys.invalidate(data.decode() if isinstance(data, bytes) else data)
                    else:
                        self._apply_change(data)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("lost the Redis subscription (%s); reconnecting", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _apply_change(self, data: bytes) -> None:
        try:
            change = RegistryChange.model_validate_json(data)
        except ValueError:
            log.warning("ignoring a malformed routing change")
            return
        if change.op == "put" and change.instance is not None:
            self.router.put(change.instance)
        elif change.op == "remove":
            self.router.remove(change.instance_id)

    async def _reload_registry(self) -> None:
        assert self._redis is not None
        entries = await self._redis.hgetall(ROUTING_REGISTRY)
        infos: dict[str, RoutableInstance] = {}
        for raw in entries.values():
            try:
                info = RoutableInstance.model_validate_json(raw)
            except ValueError:
                continue
            infos[info.instance_id] = info
        self.router.replace_all(infos)

    async def _poll_instance_load(self) -> None:
        assert self._redis is not None
        if not self.router.backends:
            return
        reports = await self._redis.hmget(INSTANCE_LOAD, list(self.router.backends))
        for instance_id, raw in zip(list(self.router.backends), reports, strict=True):
            if raw is None:
                continue
            try:
                report = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(report, dict):
                self.router.update_load(instance_id, report)

    async def _reload_deployments(self) -> None:
        assert self._pool is not None
        rows = await self._pool.fetch(
            "SELECT id, project_id, served_name, session_affinity FROM deployments"
            " WHERE deleted_at IS NULL"  # a retired deployment's name is free for another
        )
        deployments: dict[str, list[DeploymentEntry]] = {}
        for row in rows:
            deployments.setdefault(row["served_name"], []).append(
                DeploymentEntry(str(row["id"]), str(row["project_id"]), row["session_affinity"])
            )
        self.deployments = deployments

    def _backend_removed(self, backend: Backend) -> None:
        url = backend.info.engine_url
        if not any(b.info.engine_url == url for b in self.router.backends.values()):
            self.upstream.drop(url)
        with contextlib.suppress(KeyError):
            metrics.INFLIGHT.remove(backend.info.model, backend.instance_id)

    async def _publish_load(self) -> None:
        """Per deployment: queue length and wait, in-flight, arrival rate (for the autoscaler)."""
        assert self._redis is not None
        period = self.config.load_publish_s
        now = time.time()
        inflight = self.router.inflight_by_deployment()
        for backend in self.router.backends.values():
            metrics.INFLIGHT.labels(backend.info.model, backend.instance_id).set(backend.inflight)
        models: dict[str, set[str]] = {}
        for model, entries in self.deployments.items():
            models.setdefault(model, set()).update(entry.id for entry in entries)
        for backend in self.router.backends.values():
            models.setdefault(backend.info.model, set()).add(backend.info.deployment_id)
        pipe = self._redis.pipeline(transaction=False)
        for model, deployment_ids in models.items():
            queue = self.router.queue(model)
            waits = sorted(queue.waits_ms)
            for wait in waits:
                metrics.QUEUE_WAIT.labels(model).observe(wait / 1000)
            metrics.QUEUE_LENGTH.labels(model).set(queue.length)
            for deployment_id in deployment_ids:
                signal = GatewayLoad(
                    ts=now,
                    replica_id=self.replica_id,
                    model=model,
                    queue_length=queue.length,
                    queue_wait_p50_ms=_percentile(waits, 0.50),
                    queue_wait_p95_ms=_percentile(waits, 0.95),
                    in_flight=inflight.get(deployment_id, 0),
                    arrival_rate_per_s=queue.arrivals / period,
                    rejected_per_s=queue.rejected / period,
                )
                key = gateway_load_key(deployment_id)
                pipe.hset(key, self.replica_id, signal.model_dump_json())
                pipe.expire(key, max(30, int(period * 10)))
            queue.waits_ms = []
            queue.arrivals = 0
            queue.rejected = 0
        await pipe.execute()

    async def _flush_tokens(self) -> None:
        if not self._pending_tokens or self._limiter is None:
            return
        pending, self._pending_tokens = self._pending_tokens, {}
        for key_id, tokens in pending.items():
            await self._limiter.add_tokens(key_id, tokens)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        route = _PROXY_ROUTES.get(path)
        try:
            if route is not None:
                if method != "POST":
                    raise GatewayError(405, f"Use POST for {path}.", code="method_not_allowed")
                await self._proxy(scope, receive, send, route)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise GatewayError(405, f"Use GET for {path}.", code="method_not_allowed")
                await self._models(scope, send, path[len("/v1/models/") :] or None)
            elif path == "/healthz":
                await _respond(send, 200, b'{"status":"ok"}')
            elif path == "/readyz":
                ok = self.ready
                body = b'{"status":"ready"}' if ok else b'{"status":"starting"}'
                await _respond(send, 200 if ok else 503, body)
            elif path == "/metrics":
                text, content_type = metrics.render()
                await _respond(send, 200, text, [(b"content-type", content_type.encode())])
            else:
                raise GatewayError(404, f"Unknown path {path}.", code="not_found")
        except GatewayError as exc:
            await _respond(send, exc.status, exc.body(), exc.headers + _JSON_HEADERS)
        except ClientGone:
            return

    async def _authenticate(self, scope: Scope) -> KeyInfo:
        assert self._keys is not None
        secret = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    secret = token.strip()
                break
        if not secret:
            raise invalid_key()
        try:
            key = await self._keys.lookup(secret)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _warn_at_most_every(10, "keys", "API key lookup failed: %s", exc)
            raise unavailable("Key verification is unavailable; retry shortly.", 2) from exc
        if key is None:
            raise invalid_key()
        return key

    async def _models(self, scope: Scope, send: Send, one: str | None) -> None:
        await self._authenticate(scope)
        names = sorted(set(self.deployments) | set(self.router.models()))
        cards = [{"id": n, "object": "model", "created": 0, "owned_by": "inventiv"} for n in names]
        if one is not None:
            card = next((c for c in cards if c["id"] == one), None)
            if card is None:
                raise model_not_found(one)
            await _respond(send, 200, orjson.dumps(card), _JSON_HEADERS)
            return
        await _respond(send, 200, orjson.dumps({"object": "list", "data": cards}), _JSON_HEADERS)

    # ------------------------------------------------------------------ proxy

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, route: tuple[bytes, str]
    ) -> None:
        started = time.perf_counter()
        key = await self._authenticate(scope)
        body = await _read_body(receive)
        request = _parse_request(body, route[1])
        model: str = request["model"]
        stream = request.get("stream") is True
        if stream and route[0] == b"/v1/embeddings":
            raise bad_request("Embeddings cannot be streamed.", "stream")
        if model not in self.router.by_model and model not in self.deployments:
            raise model_not_found(model)

        outcome = _Outcome(streamed=stream)
        wants_usage = True
        if stream:
            options = request.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not wants_usage:
                # Ask the engine for usage anyway (token accounting); the extra chunk is removed.
                request["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                body = orjson.dumps(request)
        session = self._session(scope, model, request)
        self.router.queue(model).arrivals += 1

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
            "extensions", {}
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
                await self._check_rate_limit(key, outcome)
            await self._forward(
                send, key, model, session, route[0], body, stream, wants_usage, outcome
            )
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            outcome.status = 499
        except GatewayError as exc:
            outcome.status = exc.status
            headers = exc.headers + outcome.headers + _JSON_HEADERS
            await _respond(send, exc.status, exc.body(), headers)
        finally:
            if register is not None:
                register(None)
            elif watcher is not None:
                watcher.cancel()
            self._finish(key, model, outcome, started)

    async def _check_rate_limit(self, key: KeyInfo, outcome: _Outcome) -> None:
        assert self._limiter is not None
        try:
            decision = await self._limiter.admit(key.id, key.rpm_limit, key.tpm_limit)
        except (RedisError, OSError) as exc:
            # Fail open: an outage of the limiter must not stop inference.
            _warn_at_most_every(10, "ratelimit", "rate limiter unavailable (%s); admitting", exc)
            return
        outcome.headers = decision.headers(key.rpm_limit, key.tpm_limit)
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

    def _session(self, scope: Scope, model: str, request: dict[str, Any]) -> str | None:
        # The registry carries the deployment's setting; the deployment cache covers a model
        # with no ready instance yet (requests that wait in the queue).
        affinity = "none"
        backends = self.router.by_model.get(model)
        if backends:
            affinity = backends[0].info.session_affinity
        else:
            entries = self.deployments.get(model)
            if entries:
                affinity = entries[0].session_affinity
        if affinity == "header":
            for name, value in scope["headers"]:
                if name == self.session_header:
                    return str(value.decode("latin-1"))
        elif affinity == "user":
            user = request.get("user")
            if isinstance(user, str) and user:
                return user
        return None

    async def _acquire(self, key: KeyInfo, model: str, session: str | None) -> Backend:
        backend = self.router.acquire_now(model, session)
        if backend is not None:
            return backend
        backend = await self.router.wait(model, key.id, session, self.config.queue_deadline_s)
        if backend is None:
            ready = bool(self.router.by_model.get(model))
            raise unavailable(
                f"No capacity for model '{model}' right now"
                + ("" if ready else " (its instances are starting)")
                + "; retry later.",
                1 if ready else 5,
            )
        return backend

    async def _forward(
        self,
        send: Send,
        key: KeyInfo,
        model: str,
        session: str | None,
        path: bytes,
        body: bytes,
        stream: bool,
        wants_usage: bool,
        outcome: _Outcome,
    ) -> None:
        backend = await self._acquire(key, model, session)
        retried = False
        try:
            while True:
                outcome.backend = backend
                try:
                    response = await self.upstream.pool(backend.info.engine_url).request(
                        b"POST", path, body
                    )
                except UpstreamError as exc:
                    metrics.UPSTREAM_ERRORS.labels(model, "connect").inc()
                    failed_with: UpstreamResponse | None = None
                    error: Exception = exc
                else:
                    if response.status < 500:
                        self.router.record_success(backend)
                        break
                    metrics.UPSTREAM_ERRORS.labels(model, "5xx").inc()
                    failed_with = response
                    error = UpstreamError(
                        f"engine answered {response.status}", before_first_byte=True
                    )
                self._record_failure(backend)
                alternative = None if retried else self.router.pick(model, session, backend)
                if alternative is None:
                    if failed_with is not None:
                        response = failed_with  # nothing else to try: pass the engine's answer on
                        break
                    raise GatewayError(
                        502,
                        f"The engine serving '{model}' could not be reached: {error}",
                        type_="upstream_error",
                        code="engine_unreachable",
                    )
                if failed_with is not None:
                    failed_with.abort()
                self.router.release(backend)
                metrics.RETRIES.labels(model).inc()
                backend, retried = alternative, True

            outcome.status = response.status
            if (
                stream
                and response.status == 200
                and response.content_type.startswith(b"text/event-stream")
            ):
                outcome.streamed = True
                await self._relay_stream(send, response, wants_usage, outcome)
            else:
                outcome.streamed = False
                try:
                    data = await response.read_all()
                except UpstreamError as exc:
                    metrics.UPSTREAM_ERRORS.labels(model, "broken").inc()
                    raise GatewayError(
                        502,
                        f"The engine serving '{model}' failed while answering: {exc}",
                        type_="upstream_error",
                        code="engine_failed",
                    ) from exc
                if response.status == 200:
                    _count_usage(data, outcome)
                headers = [(b"content-type", response.content_type or b"application/json")]
                await _respond(send, response.status, data, headers + outcome.headers)
        finally:
            self.router.release(backend)

    def _record_failure(self, backend: Backend) -> None:
        before = backend.ejected_until
        self.router.record_failure(backend)
        if backend.ejected_until != before:
            metrics.EJECTIONS.labels(backend.info.model).inc()

    async def _relay_stream(
        self, send: Send, response: UpstreamResponse, wants_usage: bool, outcome: _Outcome
    ) -> None:
        """Pass SSE events on as they arrive. Complete events only (so the usage chunk can be
        read and, if the client did not ask for it, removed); keep-alive comments while the
        first token is slow."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _SSE_HEADERS + outcome.headers,
            }
        )
        keepalive = self.config.keepalive_interval_s
        pending = b""
        try:
            while True:
                chunk = await response.next_chunk(
                    keepalive if outcome.first_chunk_at is None else None
                )
                if chunk is None:
                    break
                if not chunk:
                    await send(
                        {"type": "http.response.body", "body": _KEEPALIVE, "more_body": True}
                    )
                    continue
                if outcome.first_chunk_at is None:
                    outcome.first_chunk_at = time.perf_counter()
                data = pending + chunk if pending else chunk
                end = max(data.rfind(b"\n\n") + 2, data.rfind(b"\r\n\r\n") + 4)
                if end < 4:
                    pending = data
                    continue
                events, pending = data[:end], data[end:]
                if _USAGE.search(events) is not None:
                    events = _take_usage(events, wants_usage, outcome)
                if events:
                    await send({"type": "http.response.body", "body": events, "more_body": True})
        except UpstreamError as exc:
            # Too late to retry: the client already has part of the answer. End the stream with
            # an error event it can see.
            metrics.UPSTREAM_ERRORS.labels(
                outcome.backend.info.model if outcome.backend else "", "stream"
            ).inc()
            outcome.status = 502
            pending += b"data: " + error_body(str(exc), "upstream_error", "stream_broken") + b"\n\n"
        await send({"type": "http.response.body", "body": pending, "more_body": False})

    # ------------------------------------------------------------------ accounting

    def _finish(self, key: KeyInfo, model: str, outcome: _Outcome, started: float) -> None:
        ended = time.perf_counter()
        latency = ended - started
        status = outcome.status or 500
        model_metrics = metrics.for_model(model)
        model_metrics.request(status)
        model_metrics.latency.observe(latency)
        ttft_ms = None
        if outcome.first_chunk_at is not None:
            ttft = outcome.first_chunk_at - started
            ttft_ms = ttft * 1000
            model_metrics.ttft.observe(ttft)
            if outcome.output_tokens > 1 and ended > outcome.first_chunk_at:
                model_metrics.tokens_per_second.observe(
                    (outcome.output_tokens - 1) / (ended - outcome.first_chunk_at)
                )
        tokens = outcome.input_tokens + outcome.output_tokens
        if tokens:
            model_metrics.input_tokens.inc(outcome.input_tokens)
            model_metrics.output_tokens.inc(outcome.output_tokens)
            if key.tpm_limit is not None:
                self._pending_tokens[key.id] = self._pending_tokens.get(key.id, 0) + tokens
        backend = outcome.backend
        assert self._logs is not None
        self._logs.add(
            (
                time.time(),
                key.id,
                key.project_id,
                backend.info.deployment_id if backend else self._deployment_of(model),
                backend.instance_id if backend else None,
                model,
                outcome.input_tokens,
                outcome.output_tokens,
                ttft_ms,
                latency * 1000,
                status,
                outcome.streamed,
            )
        )

    def _deployment_of(self, model: str) -> str | None:
        entries = self.deployments.get(model)
        return entries[0].id if entries else None


# ---------------------------------------------------------------------- helpers


def create_app(settings: Settings, gateway_settings: GatewaySettings | None = None) -> Gateway:
    """The gateway as an ASGI application (serve it with uvicorn, or `python -m gateway`)."""
    return Gateway(settings, gateway_settings)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or _JSON_HEADERS), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY:
            raise GatewayError(413, f"Request body over {MAX_BODY} bytes.", code="body_too_large")
        parts.append(part)
        if not message.get("more_body"):
            return b"".join(parts)


def _parse_request(body: bytes, required: str) -> dict[str, Any]:
    if not body:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise bad_request("The request body must be a JSON object.")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required (a string).", "model")
    if required not in request:
        raise bad_request(f"'{required}' is required.", required)
    if "stream" in request and not isinstance(request["stream"], bool):
        raise bad_request("'stream' must be a boolean.", "stream")
    return request


def _count_usage(data: bytes, outcome: _Outcome) -> None:
    """Token counts of a complete JSON response, read without parsing the whole body."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return
    tail = data[at:]
    prompt = _PROMPT_TOKENS.search(tail)
    completion = _COMPLETION_TOKENS.search(tail)
    outcome.input_tokens = int(prompt.group(1)) if prompt else 0
    outcome.output_tokens = int(completion.group(1)) if completion else 0


def _take_usage(events: bytes, keep: bool, outcome: _Outcome) -> bytes:
    """Read usage from the events that carry it; drop the usage-only chunk unless `keep`."""
    kept: list[bytes] = []
    for event in re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", events):
        if not event:
            continue
        if _USAGE.search(event) is not None:
            payload = event.strip()
            if payload.startswith(b"data:"):
                payload = payload[5:].strip()
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                outcome.input_tokens = int(usage.get("prompt_tokens") or 0)
                outcome.output_tokens = int(usage.get("completion_tokens") or 0)
                if not keep and not chunk.get("choices"):
                    continue
        kept.append(event)
    return b"".join(kept)


_last_warning: dict[str, float] = {}


def _warn_at_most_every(period_s: float, topic: str, message: str, *args: object) -> None:
    """A per-request failure (an outage) is logged once per period, not once per request."""
    now = time.monotonic()
    if now - _last_warning.get(topic, -period_s) >= period_s:
        _last_warning[topic] = now
        log.warning(message, *args)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index], 3)
