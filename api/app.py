"""The API application: REST under /api/v1, OpenAPI at /docs, the built dashboard at /."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions
from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api import temporal
from api.body_limit import BodyLimit
from api.errors import UNAVAILABLE_RESPONSE, Dependency, DependencyUnavailableError
from api.routers import (
    agents,
    api_keys,
    auth,
    costs,
    deployments,
    events,
    instances,
    machines,
    metrics,
    overview,
    projects,
    prometheus,
    providers,
    quotas,
    usage,
    users,
)
from api.tracing import RequestSpans
from core.db import DatabaseUnavailableError, make_engine, make_sessionmaker
from core.observability import ObservabilitySettings
from core.quotas import QuotaExceeded
from core.settings import Settings
from core.tracing import start_tracing

API_PREFIX = "/api/v1"
DASHBOARD_DIST = Path(__file__).resolve().parents[1] / "dashboard" / "dist"
# SQLSTATEs of a server that is going away, starting, full or too slow: not the query's fault.
DATABASE_OUTAGE_SQLSTATES = ("08", "53", "57P", "57014")


def operation_id(route: APIRoute) -> str:
    """Stable operation ids for generated clients: `<tag>-<function name>`."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _routers() -> list[APIRouter]:
    return [
        auth.router,
        users.router,
        projects.router,
        quotas.router,
        api_keys.router,
        deployments.router,
        instances.router,
        overview.router,
        usage.router,
        costs.router,
        metrics.router,
        events.router,
        providers.router,
        agents.router,
        machines.router,
    ]


def create_app(
    settings: Settings, *, dashboard_dist: Path = DASHBOARD_DIST, sse_keepalive_s: float = 15
) -> FastAPI:
    settings.require_all("database_url", "redis_url", "temporal_address", "secret_key")
    tracing = start_tracing(ObservabilitySettings(), "inventiv-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every call to a dependency is bounded: one that is down answers 503, never a hang.
        engine = make_engine(settings.require("database_url"), timeout_s=settings.db_timeout_s)
        app.state.settings = settings
        # A blocking read of the event stream must return before the Redis socket timeout.
        app.state.sse_keepalive_s = min(sse_keepalive_s, settings.redis_timeout_s / 2)
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.redis = aioredis.Redis.from_url(
            settings.require("redis_url"),
            decode_responses=True,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
        )
        app.state.temporal = await temporal.connect(settings, tracing)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await engine.dispose()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)

    app = FastAPI(
        title="Inventiv API",
        version="0.1.0",
        description=(
            "Control plane: users, projects, API keys, deployments, instances, usage, costs, "
            "metrics and live events. Log in at POST /api/v1/auth/login; send the token as "
            "`Authorization: Bearer <token>` or let the browser keep the session cookie."
        ),
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        responses=UNAVAILABLE_RESPONSE,
    )
    # Outermost last: bodies are capped before anything reads them; forwarded headers are
    # believed only from the configured proxies (client address for throttling, https scheme).
    trusted = [a.strip() for a in settings.trusted_proxies.split(",") if a.strip()]
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_body_bytes)
    if tracing is not None:
        app.add_middleware(RequestSpans, tracer=tracing.tracer)
    router = APIRouter(prefix=API_PREFIX)
    for module_router in _routers():
        router.include_router(module_router)
    app.include_router(router)
    app.include_router(prometheus.router)  # /metrics and service discovery, outside /api/v1's list

    def unavailable(dependency: Dependency, reason: str) -> JSONResponse:
        retry_after = settings.outage_retry_after_s
        return JSONResponse(
            {
                "detail": f"{dependency} unavailable ({reason}): retry in {retry_after} s",
                "dependency": dependency,
            },
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(retry_after)},
        )

    @app.exception_handler(QuotaExceeded)
    async def quota_exceeded(request: Request, exc: QuotaExceeded) -> JSONResponse:
        """Nothing was created: the project's quota (or the deployment's max_instances) says no."""
        return JSONResponse({"detail": exc.reason}, exc.status_code)

    @app.exception_handler(DependencyUnavailableError)
    async def dependency_unavailable(
        request: Request, exc: DependencyUnavailableError
    ) -> JSONResponse:
        return unavailable(exc.dependency, exc.reason)

    @app.exception_handler(DatabaseUnavailableError)
    async def database_unavailable(request: Request, exc: DatabaseUnavailableError) -> JSONResponse:
        return unavailable("database", str(exc))

    @app.exception_handler(PoolTimeoutError)
    async def database_pool_exhausted(request: Request, exc: PoolTimeoutError) -> JSONResponse:
        return unavailable("database", "no free connection in time")

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_unavailable(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        return unavailable("redis", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        """Errors PostgreSQL blames on the values sent (SQLSTATE class 22: out of range, NUL
        byte, bad Unicode escape) are the client's: 400; integrity violations (class 23: a
        concurrent change took a unique name or removed a referenced row): 409; a lost
        connection or a server going away, starting, full or too slow: 503. Others: 500."""
        sqlstate = str(getattr(getattr(exc.orig, "driver_exception", exc.orig), "sqlstate", ""))
        message = str(exc.orig).splitlines()[0] if exc.orig else ""
        if exc.connection_invalidated or sqlstate.startswith(DATABASE_OUTAGE_SQLSTATES):
            return unavailable("database", message or "connection lost")
        if sqlstate.startswith("22"):
            return JSONResponse(
                {"detail": f"invalid value: {message}"}, status.HTTP_400_BAD_REQUEST
            )
        if sqlstate.startswith("23"):
            return JSONResponse({"detail": f"conflict: {message}"}, status.HTTP_409_CONFLICT)
        raise exc

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/{path:path}", include_in_schema=False)
    def dashboard(path: str) -> FileResponse:
        """The built dashboard (a single-page app): files as they are, any other page to
        index.html so client-side routes survive a reload."""
        if path == "api" or path.startswith("api/"):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API route /{path}")
        index = dashboard_dist / "index.html"
        if not index.is_file():
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                "the dashboard is not built: run `npm run build` in dashboard/ (make dev does)",
            )
        root = dashboard_dist.resolve()
        candidate = (root / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            return FileResponse(candidate)
        return FileResponse(index)

    return app
