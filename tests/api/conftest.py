"""API test fixtures: the real app (lifespan run) on real PostgreSQL, Redis and Temporal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from core.models import (
    ActionStatus,
    Instance,
    InstanceAction,
    InstanceState,
    RequestLog,
    Role,
    utcnow,
)
from core.progress import Step
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


async def add_instance(
    sessionmaker: Any,
    tenant: Tenant,
    *,
    state: InstanceState = InstanceState.ready,
    created_at: datetime | None = None,
    terminated_at: datetime | None = None,
    reached_provider: bool = True,
) -> Instance:
    """An instance row of the tenant's deployment (no workflow behind it); unless told
    otherwise, its machine was asked of the provider when the row was created (billing starts
    there)."""
    instance_id = uuid.uuid4()
    instance = Instance(
        id=instance_id,
        deployment_id=tenant.deployment.id,
        project_id=tenant.project.id,
        provider_id=tenant.provider.id,
        instance_type_id=tenant.instance_type.id,
        workflow_id=f"instance-{instance_id}",
        state=state,
        created_at=created_at or utcnow(),
        terminated_at=terminated_at,
    )
    async with sessionmaker() as session:
        session.add(instance)
        if reached_provider:
            await session.flush()
            session.add(
                InstanceAction(
                    instance_id=instance_id,
                    step=Step.provider_create,
                    status=ActionStatus.succeeded,
                    started_at=instance.created_at,
                    finished_at=instance.created_at,
                )
            )
        await session.commit()
    return instance


async def add_request_logs(sessionmaker: Any, tenant: Tenant, *rows: dict[str, Any]) -> None:
    """Request log rows as the gateway writes them, for the tenant's key and deployment."""
    async with sessionmaker() as session:
        for row in rows:
            values = {
                "at": utcnow(),
                "api_key_id": tenant.api_key_row.id,
                "project_id": tenant.project.id,
                "deployment_id": tenant.deployment.id,
                "model": tenant.deployment.served_name,
                "input_tokens": 10,
                "output_tokens": 20,
                "ttft_ms": 50.0,
                "latency_ms": 200.0,
                "status_code": 200,
                **row,
            }
            session.add(RequestLog(**values))
        await session.commit()
