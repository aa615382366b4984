"""The orchestrator worker: registers the workflows and activities on the task queue.

The worker is where the parts meet: it builds the activities with their clients and hands them
the workflow starters and commands of workflows/client.py, so activities never import workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from temporalio.client import Client, Interceptor
from temporalio.worker import Worker

from activities.autoscale import AutoscaleActivities
from activities.catalogue import CatalogueActivities
from activities.instance import (
    BootActivities,
    DrainActivities,
    HealthActivities,
    InstanceContext,
    ProvisionActivities,
    TeardownActivities,
)
from activities.providers.base import Compute
from activities.providers.registry import build_providers
from activities.reconcile import ReconcileActivities
from core.db import make_engine, make_sessionmaker
from core.models import TerminationReason
from core.observability import ObservabilitySettings
from core.settings import Settings
from core.tracing import Tracing, start_tracing
from workers.registration import WORKFLOWS, activity_methods
from workers.wake import follow_wake_ups
from workflows import client as workflows_client

log = logging.getLogger(__name__)


async def connect(settings: Settings, tracing: Tracing | None = None) -> Client:
    interceptors: list[Interceptor] = []
    if tracing is not None:
        # On the client, so the worker built on it gets it too: workflow and activity spans
        # join the trace their starter sent, and workflows started by activities carry it on.
        from temporalio.contrib.opentelemetry import TracingInterceptor

        interceptors.append(TracingInterceptor(tracing.tracer))
    return await Client.connect(
        settings.require("temporal_address"),
        namespace=settings.temporal_namespace,
        interceptors=interceptors,
    )


@asynccontextmanager
async def build_worker(
    settings: Settings, client: Client, providers: dict[str, Compute] | None = None
) -> AsyncIterator[Worker]:
    """A worker with every workflow and activity, and the clients its activities use."""
    # Bounded waits: an activity stuck on a hung PostgreSQL or Redis fails and is retried
    # instead of holding its slot until its own timeout.
    engine = make_engine(settings.require("database_url"), timeout_s=settings.db_timeout_s)
    redis = aioredis.Redis.from_url(
        settings.require("redis_url"),
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    providers = providers if providers is not None else build_providers(settings)
    task_queue = settings.task_queue

    async def start_instance(instance_id: uuid.UUID) -> None:
        await workflows_client.start_instance_workflow(client, task_queue, instance_id)

    async def resume_instance(instance_id: uuid.UUID) -> bool:
        return await workflows_client.resume_instance_workflow(client, task_queue, instance_id)

    async def drain_instance(workflow_id: str, reason: TerminationReason) -> bool:
        return await workflows_client.drain_if_accepted(client, workflow_id, reason)

    async def report_provider_deleted(workflow_id: str) -> None:
        await workflows_client.report_provider_deleted(client, workflow_id)

    async def ensure_autoscaler(deployment_id: uuid.UUID) -> None:
        await workflows_client.ensure_autoscaler(
            client, task_queue, deployment_id, settings.autoscale_interval_s
        )

    sessionmaker = make_sessionmaker(engine)
    ctx = InstanceContext(settings, sessionmaker, redis, providers)
    activities = activity_methods(
        ProvisionActivities(ctx),
        BootActivities(ctx),
        HealthActivities(ctx, start_instance),
        DrainActivities(ctx),
        TeardownActivities(ctx),
        ReconcileActivities(
            sessionmaker,
            redis,
            providers,
            report_provider_deleted,
            ensure_autoscaler,
            resume_instance,
        ),
        AutoscaleActivities(sessionmaker, redis, start_instance, drain_instance, providers),
        CatalogueActivities(providers),
    )
    worker = Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=activities)
    subscribed = asyncio.Event()
    wake_ups = asyncio.create_task(follow_wake_ups(redis, client, subscribed), name="wake-ups")
    try:
        await asyncio.wait_for(subscribed.wait(), timeout=10)
        yield worker
    finally:
        wake_ups.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await wake_ups
        await ctx.close()
        for adapter in providers.values():
            await adapter.close()
        await redis.aclose()
        await engine.dispose()


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    tracing = start_tracing(ObservabilitySettings(), "inventiv-worker")
    try:
        client = await connect(settings, tracing)
        await workflows_client.ensure_reconciler(client, settings)
        async with build_worker(settings, client) as worker:
            log.info("orchestrator worker polling %s", settings.task_queue)
            async with worker:
                await stop.wait()
    finally:
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
