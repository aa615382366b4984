"""The gateway: a lean ASGI application (no framework routing on the hot path).

This module wires the parts and dispatches: `/v1/chat/completions`, `/v1/completions` and
`/v1/embeddings` go to the proxy path (gateway.proxy); `/v1/models` (the key's own project's
models), health and metrics (scrape token, or loopback only) are answered here; a `GatewayError` anywhere becomes its OpenAI-format error. The background work
lives in gateway.control, the bookkeeping in gateway.accounting, routing in gateway.routing, the
SQL in gateway.sql and the wire protocols in gateway.protocols. `python -m gateway` serves it
with gateway.protocols.http_server; any ASGI server (uvicorn in tests) can too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import socket

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.observability import ObservabilitySettings
from core.settings import Settings
from core.tokens import engine_api_key
from core.tracing import Tracing, start_tracing
from gateway import metrics
from gateway.accounting import Accounting
from gateway.asgi import JSON_HEADERS, ClientGone, Receive, Scope, Send, respond
from gateway.control import ChannelFollower, LoadPublisher, RegistrySync, Supervisor
from gateway.deployments import DeploymentMap
from gateway.errors import GatewayError, model_not_found
from gateway.keys import KeyCache
from gateway.logs import RequestLogWriter
from gateway.protocols.http_client import UpstreamClient
from gateway.proxy import PROXY_ROUTES, Proxy
from gateway.ratelimit import RateLimiter
from gateway.routing import Backend, Router
from gateway.settings import GatewaySettings
from gateway.tracing import RequestTraces

log = logging.getLogger("inventiv.gateway")

CONTROL_REDIS_TIMEOUT_S = 5.0  # one reply to a control loop (full registry reads included)
_LOOPBACK = ("127.0.0.1", "::1")


class Gateway:
    def __init__(self, settings: Settings, gateway_settings: GatewaySettings | None = None) -> None:
        # Resolved once: a missing URL stops the process here, naming the setting.
        self.redis_url = settings.require("redis_url")
        self.dsn = settings.require("database_url").replace(
            "postgresql+asyncpg://", "postgresql://"
        )
        # The engines' API keys are derived from it per instance (core.tokens.engine_api_key).
        secret_key = settings.require("secret_key")
        self.settings = settings
        self.config = gateway_settings or GatewaySettings()
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}"
        self.router = Router(
            self.config,
            on_removed=self._backend_removed,
            engine_key=functools.partial(engine_api_key, secret_key),
            on_starved=self._starved,
        )
        token = self.config.metrics_token
        self._metrics_auth = None if token is None else f"Bearer {token.get_secret_value()}"
        self.upstream = UpstreamClient(connect_timeout=self.config.connect_timeout_s)
        self.deployments = DeploymentMap()
        self.supervisor = Supervisor()
        self.ready = False
        # Built at startup (they need the event loop and the connections).
        self._redis: aioredis.Redis | None = None
        self._publisher: LoadPublisher | None = None
        self._pool: asyncpg.Pool | None = None
        self._keys: KeyCache | None = None
        self._limiter: RateLimiter | None = None
        self._logs: RequestLogWriter | None = None
        self._accounting: Accounting | None = None
        self._proxy: Proxy | None = None
        self._tracing: Tracing | None = None

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        config = self.config
        # Control loops' Redis calls are bounded too (a hung Redis must not hang them for ever);
        # the rate limiter's fast client has its own, shorter, reply timeout.
        redis = self._redis = aioredis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=config.redis_connect_timeout_s,
            socket_timeout=CONTROL_REDIS_TIMEOUT_S,
        )
        pool = self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        keys = self._keys = KeyCache(
            pool, self.settings.api_key_cache_ttl_s, config.unknown_key_ttl_s
        )
        limiter = self._limiter = RateLimiter(
            self.redis_url, redis, config.redis_connect_timeout_s, config.redis_reply_timeout_s
        )
        logs = self._logs = RequestLogWriter(pool, config.log_batch_size, config.log_buffer_max)
        accounting = self._accounting = Accounting(logs, limiter)
        tracing = self._tracing = start_tracing(ObservabilitySettings(), "inventiv-gateway")
        traces = None if tracing is None else RequestTraces(tracing.tracer)
        self._proxy = Proxy(
            config, keys, limiter, self.router, self.deployments, self.upstream, accounting, traces
        )

        sync = RegistrySync(redis, self.router)
        follower = ChannelFollower(redis, sync, keys)
        publisher = self._publisher = LoadPublisher(
            redis, self.router, self.deployments, self.replica_id, config.load_publish_s
        )

        async def reload_deployments() -> None:
            await self.deployments.reload(pool)
            metrics.declare_models(entry.served_name for entry in self.deployments.entries())

        loops = self.supervisor
        loops.start("follow channels", follower.run)
        loops.every("registry reload", config.registry_refresh_s, sync.reload)
        loops.every("instance load poll", config.load_poll_s, sync.poll_load)
        loops.every("deployments reload", config.deployments_refresh_s, reload_deployments)
        loops.every("load publish", config.load_publish_s, publisher.publish)
        loops.every("key last-used flush", 5.0, keys.flush_last_used)
        loops.every("token flush", 0.25, accounting.flush_tokens)
        loops.every("metrics flush", 0.25, metrics.flush_periodically)
        loops.every("rate-limit lease release", 0.1, limiter.release_expired)
        loops.start("request log writer", functools.partial(logs.run, config.log_flush_s))

        # Subscribe before the first full read, so no change falls between the two.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.subscribed.wait(), 5)
        for initial in (sync.reload, reload_deployments, sync.poll_load):
            try:
                await initial()
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                log.warning("initial load failed (%s); retrying in the background", exc)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.supervisor.stop()
        metrics.flush()  # with several workers, a worker's counts outlive it in their file
        try:
            if self._accounting is not None:
                await self._accounting.flush_tokens()
            if self._limiter is not None:
                await self._limiter.release_all()
            if self._logs is not None:
                await asyncio.wait_for(self._logs.flush(until_empty=True), 10)
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
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)

    def _backend_removed(self, backend: Backend) -> None:
        url = backend.info.engine_url
        if not self.router.registry.serves(url):
            self.upstream.drop(url)
        with contextlib.suppress(KeyError):
            metrics.INFLIGHT.remove(backend.info.model, backend.instance_id)

    def _starved(self, deployment_id: str) -> None:
        """A request waits for a deployment with no instance: wake its autoscaler."""
        if self._publisher is not None:
            self._publisher.wake(deployment_id)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return
        # HTTP dispatch inline, not in a coroutine of its own: it runs for every request.
        path: str = scope["path"]
        method: str = scope["method"]
        route = PROXY_ROUTES.get(path)
        try:
            if route is not None:
                if method != "POST":
                    raise GatewayError(405, f"Use POST for {path}.", code="method_not_allowed")
                assert self._proxy is not None, "request before startup"
                await self._proxy.handle(scope, receive, send, route)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise GatewayError(405, f"Use GET for {path}.", code="method_not_allowed")
                await self._models(scope, send, path[len("/v1/models/") :] or None)
            elif path == "/healthz":
                await respond(send, 200, b'{"status":"ok"}')
            elif path == "/readyz":
                ok = self.ready
                body = b'{"status":"ready"}' if ok else b'{"status":"starting"}'
                await respond(send, 200 if ok else 503, body)
            elif path == "/metrics":
                self._check_scraper(scope)
                text, content_type = metrics.render()
                await respond(send, 200, text, [(b"content-type", content_type.encode())])
            else:
                raise GatewayError(404, f"Unknown path {path}.", code="not_found")
        except GatewayError as exc:
            await respond(send, exc.status, exc.body(), exc.headers + JSON_HEADERS)
        except ClientGone:
            return

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

    def _check_scraper(self, scope: Scope) -> None:
        """Every project's models and traffic are in /metrics: the scrape token, or (when none
        is set) a client on this machine."""
        if self._metrics_auth is None:
            client = scope.get("client")
            if client is None or client[0] not in _LOOPBACK:
                raise GatewayError(
                    403,
                    "/metrics answers only local clients unless INVENTIV_METRICS_TOKEN is set.",
                    code="forbidden",
                )
            return
        sent = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
        if not hmac.compare_digest(sent, self._metrics_auth.encode()):
            raise GatewayError(401, "/metrics needs the scrape token.", code="invalid_api_key")

    async def _models(self, scope: Scope, send: Send, one: str | None) -> None:
        assert self._keys is not None, "request before startup"
        key = await self._keys.authenticate(scope["headers"])
        project = key.project_id
        names = sorted(self.deployments.names(project) | self.router.registry.models(project))
        cards = [{"id": n, "object": "model", "created": 0, "owned_by": "inventiv"} for n in names]
        if one is not None:
            card = next((c for c in cards if c["id"] == one), None)
            if card is None:
                raise model_not_found(one)
            await respond(send, 200, orjson.dumps(card), JSON_HEADERS)
            return
        await respond(send, 200, orjson.dumps({"object": "list", "data": cards}), JSON_HEADERS)


def create_app(settings: Settings, gateway_settings: GatewaySettings | None = None) -> Gateway:
    """The gateway as an ASGI application (serve it with uvicorn, or `python -m gateway`)."""
    return Gateway(settings, gateway_settings)
