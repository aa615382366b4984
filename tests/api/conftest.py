"""API test fixtures: the real app (lifespan run) on real PostgreSQL, Redis and Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from core.models import Role
from core.settings import Settings
from tests.factories import Seeded, seed


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    """Bearer headers for the user (cookies are not kept between calls)."""
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


class Tenant:
    """A member (or admin) with a project, provider, instance type, deployment and API key."""

    def __init__(self, seeded: Seeded, headers: dict[str, str]) -> None:
        self.seeded = seeded
        self.headers = headers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.seeded, name)


async def make_tenant(
    client: httpx.AsyncClient, sessionmaker: Any, *, role: Role = Role.member, **kwargs: Any
) -> Tenant:
    async with sessionmaker() as session:
        seeded = await seed(session, role=role, **kwargs)
    return Tenant(seeded, await login(client, seeded.user.email, seeded.password))


@pytest.fixture
async def alice(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    return await make_tenant(client, sessionmaker, model="alice-model")


@pytest.fixture
async def bob(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    return await make_tenant(client, sessionmaker, model="bob-model")


@pytest.fixture
async def admin(client: httpx.AsyncClient, sessionmaker: Any) -> Tenant:
    return await make_tenant(client, sessionmaker, role=Role.admin, model="admin-model")
