"""The API application: REST under /api/v1, OpenAPI at /docs, the built dashboard at /."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError, IntegrityError
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
    found = [
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
        agents.router,
    ]
    # Owned by the providers work; included when present.
    try:
        found.append(importlib.import_module("api.routers.providers").router)
    except ModuleNotFoundError:
        pass
    return found


def create_app(
    settings: Settings, *, dashboard_dist: Path = DASHBOARD_DIST, sse_keepalive_s: float = 15
) -> FastAPI:
    assert settings.database_url and settings.redis_url and settings.temporal_address

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url or "")
        app.state.settings = settings
        app.state.sse_keepalive_s = sse_keepalive_s
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.redis = aioredis.Redis.from_url(settings.redis_url or "", decode_responses=True)
        app.state.temporal = await Client.connect(
            settings.temporal_address or "", namespace=settings.temporal_namespace
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

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> JSONResponse:
        """A value PostgreSQL cannot store (out of range, NUL byte): the client's input."""
        message = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
        return JSONResponse({"detail": f"invalid value: {message}"}, status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
        """A concurrent change won the race for a unique name or removed a referenced row."""
        message = str(exc.orig).splitlines()[0] if exc.orig else "conflict"
        return JSONResponse({"detail": f"conflict: {message}"}, status.HTTP_409_CONFLICT)

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
