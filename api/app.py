"""The API application: REST under /api/v1, OpenAPI at /docs, the built dashboard at /."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from temporalio.client import Client

from api.routers import (
    agents,
    api_keys,
    auth,
    costs,
    deployments,
    events,
    instances,
    metrics,
    overview,
    projects,
    prometheus,
    providers,
    usage,
    users,
)
from core.db import make_engine, make_sessionmaker
from core.settings import Settings

API_PREFIX = "/api/v1"
DASHBOARD_DIST = Path(__file__).resolve().parents[1] / "dashboard" / "dist"


def operation_id(route: APIRoute) -> str:
    """Stable operation ids for generated clients: `<tag>-<function name>`."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _routers() -> list[APIRouter]:
    return [
        auth.router,
        users.router,
        projects.router,
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
    ]


def create_app(
    settings: Settings, *, dashboard_dist: Path = DASHBOARD_DIST, sse_keepalive_s: float = 15
) -> FastAPI:
    settings.require_all("database_url", "redis_url", "temporal_address", "secret_key")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.require("database_url"))
        app.state.settings = settings
        app.state.sse_keepalive_s = sse_keepalive_s
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.redis = aioredis.Redis.from_url(
            settings.require("redis_url"), decode_responses=True
        )
        app.state.temporal = await Client.connect(
            settings.require("temporal_address"), namespace=settings.temporal_namespace
        )
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await engine.dispose()

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
    )
    router = APIRouter(prefix=API_PREFIX)
    for module_router in _routers():
        router.include_router(module_router)
    app.include_router(router)
    app.include_router(prometheus.router)  # /metrics and service discovery, outside /api/v1's list

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        """Errors PostgreSQL blames on the values sent (SQLSTATE class 22: out of range, NUL
        byte, bad Unicode escape) are the client's: 400; integrity violations (class 23: a
        concurrent change took a unique name or removed a referenced row): 409. Others: 500."""
        sqlstate = str(getattr(getattr(exc.orig, "driver_exception", exc.orig), "sqlstate", ""))
        message = str(exc.orig).splitlines()[0] if exc.orig else ""
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
