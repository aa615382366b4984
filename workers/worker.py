"""The orchestrator worker: registers the workflows and activities on the task queue."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.autoscale import AutoscaleActivities
from activities.instance import InstanceActivities
from activities.launch import start_instance_workflow
from activities.providers.base import Compute
from activities.providers.registry import build_providers
from activities.reconcile import ReconcileActivities
from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from workflows.autoscaler import AutoscalerWorkflow
from workflows.instance import InstanceWorkflow
from workflows.reconciler import ReconcilerWorkflow, reconciler_workflow_id
from workflows.types import ReconcileInput

log = logging.getLogger(__name__)


async def connect(settings: Settings) -> Client:
    assert settings.temporal_address
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


@asynccontextmanager
async def build_worker(
    settings: Settings, client: Client, providers: dict[str, Compute] | None = None
) -> AsyncIterator[Worker]:
    """A worker with every workflow and activity, and the clients its activities use."""
    assert settings.database_url and settings.redis_url
    engine = make_engine(settings.database_url)
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    providers = providers if providers is not None else build_providers(settings)

    async def start_instance(instance_id: uuid.UUID) -> None:
        await start_instance_workflow(client, settings.task_queue, instance_id)

    sessionmaker = make_sessionmaker(engine)
    lifecycle = InstanceActivities(settings, sessionmaker, redis, providers, start_instance)
    reconcile = ReconcileActivities(sessionmaker, redis, providers, client, settings)
    autoscale = AutoscaleActivities(sessionmaker, redis, client, start_instance)
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[InstanceWorkflow, ReconcilerWorkflow, AutoscalerWorkflow],
        activities=[
            lifecycle.load_spec,
            lifecycle.record_request,
            lifecycle.provider_create,
            lifecycle.boot_step,
            lifecycle.mark_ready,
            lifecycle.fail_startup,
            lifecycle.set_routable,
            lifecycle.check_health,
            lifecycle.record_unhealthy,
            lifecycle.start_replacement,
            lifecycle.begin_drain,
            lifecycle.wait_drained,
            lifecycle.begin_terminate,
            lifecycle.discover_volumes,
            lifecycle.delete_server,
            lifecycle.confirm_gone,
            lifecycle.delete_volume,
            lifecycle.finish_termination,
            lifecycle.archive,
            reconcile.reconcile_once,
            autoscale.assess,
            autoscale.scale_up,
            autoscale.scale_down,
        ],
    )
    try:
        yield worker
    finally:
        await lifecycle.http.aclose()
        for adapter in providers.values():
            await adapter.close()
        await redis.aclose()
        await engine.dispose()


async def ensure_reconciler(client: Client, settings: Settings) -> None:
    """Start the reconciler once per cluster (an already running one is kept)."""
    await client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcileInput(settings.reconcile_interval_s, settings.orphan_grace_s),
        id=reconciler_workflow_id(settings.task_queue),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect(settings)
    await ensure_reconciler(client, settings)
    async with build_worker(settings, client) as worker:
        log.info("orchestrator worker polling %s", settings.task_queue)
        async with worker:
            await stop.wait()
