"""Helpers for lifecycle tests: a worker on a fresh task queue, waiting on database state."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from activities.providers.base import Compute
from activities.providers.local.adapter import LocalCompute
from activities.providers.local.settings import LocalFaults
from core.models import Instance, InstanceAction, InstanceState, InstanceStateHistory
from core.settings import Settings
from core.tokens import engine_api_key
from workers.worker import build_worker
from workflows.client import create_instance


@asynccontextmanager
async def running_worker(
    settings: Settings, client: Client, providers: dict[str, Compute] | None = None
) -> AsyncIterator[None]:
    async with build_worker(settings, client, providers) as worker, worker:
        yield


def local_providers(settings: Settings, **faults: object) -> dict[str, Compute]:
    return {"local": LocalCompute(settings, LocalFaults(**faults))}  # type: ignore[arg-type]


async def provision(
    maker: async_sessionmaker[AsyncSession], client: Client, settings: Settings, deployment: Any
) -> Instance:
    """A new instance of the deployment, its workflow started (as the API does)."""
    async with maker() as session:
        return await create_instance(session, client, settings.task_queue, deployment=deployment)


async def wait_state(
    maker: async_sessionmaker[AsyncSession],
    instance_id: uuid.UUID,
    states: set[InstanceState] | InstanceState,
    timeout: float = 60,
) -> Instance:
    wanted = {states} if isinstance(states, InstanceState) else states
    deadline = time.monotonic() + timeout
    instance = None
    while time.monotonic() < deadline:
        async with maker() as session:
            instance = await session.get(Instance, instance_id)
        if instance is not None and instance.state in wanted:
            return instance
        await asyncio.sleep(0.2)
    state = instance.state if instance else None
    log = "\n".join(
        f"  {a.step}: {a.status} {a.detail or ''} {a.error or ''}"
        for a in await actions(maker, instance_id)
    )
    error = instance.error if instance else None
    raise AssertionError(
        f"instance {instance_id} is {state}, not {wanted}, after {timeout}s; "
        f"error={error}; actions:\n{log}"
    )


async def history(
    maker: async_sessionmaker[AsyncSession], instance_id: uuid.UUID
) -> list[InstanceState]:
    """The states the instance went through, starting with provisioning."""
    async with maker() as session:
        rows = (
            await session.exec(
                select(InstanceStateHistory)
                .where(InstanceStateHistory.instance_id == instance_id)
                .order_by(col(InstanceStateHistory.at), col(InstanceStateHistory.id))
            )
        ).all()
    return [InstanceState.provisioning, *[r.to_state for r in rows]]


async def actions(
    maker: async_sessionmaker[AsyncSession], instance_id: uuid.UUID
) -> list[InstanceAction]:
    async with maker() as session:
        rows = await session.exec(
            select(InstanceAction)
            .where(InstanceAction.instance_id == instance_id)
            .order_by(col(InstanceAction.started_at), col(InstanceAction.id))
        )
        return list(rows.all())


HISTORIES = Path(__file__).parent / "histories"


async def record_history(client: Client, workflow_id: str, name: str) -> None:
    """With INVENTIV_RECORD_HISTORIES=1, save the workflow's history for the replay test.

    Record again only on purpose: the committed histories are what running workflows look like,
    and the replay test fails when a change would break them.
    """
    if os.environ.get("INVENTIV_RECORD_HISTORIES") != "1":
        return
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


def engine_headers(settings: Settings, instance_id: uuid.UUID | str) -> dict[str, str]:
    """What the gateway sends an instance's engine: its own API key."""
    key = engine_api_key(settings.require("secret_key"), str(instance_id))
    return {"Authorization": f"Bearer {key}"}
