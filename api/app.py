"""The API application: REST under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI
from temporalio.client import Client

from api.routers import agents, auth, deployments, instances
from core.db import make_engine, make_sessionmaker
from core.settings import Settings

API_PREFIX = "/api/v1"


def create_app(settings: Settings) -> FastAPI:
    assert settings.database_url and settings.redis_url and settings.temporal_address

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url or "")
        app.state.settings = settings
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
        description="Control plane: users, projects, keys, deployments, instances, usage.",
        lifespan=lifespan,
    )
    router = APIRouter(prefix=API_PREFIX)
    for module in (auth, deployments, instances, agents):
        router.include_router(module.router)
    app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
