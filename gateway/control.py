"""The gateway's background control loops, off the request path, each a small unit started and
stopped by one `Supervisor`:

- `ChannelFollower`: registry changes and API-key invalidations pushed on Redis pub/sub;
- `RegistrySync`: the full routing registry (a safety net for missed messages) and the engines'
  load reports, read from Redis into the router's registry;
- `LoadPublisher`: per deployment, this replica's queue and in-flight figures for the autoscaler;
- periodic flushes owned by other units (deployment map, key last-used times, TPM tokens,
  rate-limit leases, request logs), registered in `Gateway.startup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.redis_keys import (
    API_KEY_CHANNEL,
    AUTOSCALER_WAKE_CHANNEL,
    INSTANCE_LOAD,
    ROUTING_CHANNEL,
    ROUTING_REGISTRY,
    gateway_load_key,
)
from core.wire import GatewayLoad, RegistryChange, RoutableInstance
from gateway import metrics
from gateway.deployments import DeploymentMap
from gateway.keys import KeyCache
from gateway.routing import Router

log = logging.getLogger("inventiv.gateway")

Stopping = Callable[[], bool]
Loop = Callable[[Stopping], Coroutine[Any, Any, None]]
# What a periodic job may meet while Redis or PostgreSQL is away: logged, retried next period.
OUTAGES = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Supervisor:
    """Starts the loops, stops them all (bounded: a client library that swallowed the
    cancellation must not block shutdown, so loops also check `stopping`)."""

    def __init__(self) -> None:
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, loop: Loop) -> None:
        self._tasks.append(asyncio.create_task(loop(self._is_stopping), name=name))

    def every(self, name: str, period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        async def periodic(stopping: Stopping) -> None:
            while not stopping():
                await asyncio.sleep(period_s)
                try:
                    await job()
                except OUTAGES as exc:
                    log.warning("%s failed: %s", name, exc)

        self.start(name, periodic)

    def _is_stopping(self) -> bool:
        return self.stopping

    async def stop(self, timeout_s: float = 5) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
        self._tasks = []


class RegistrySync:
    """ROUTING_REGISTRY and INSTANCE_LOAD (Redis) -> the router's registry."""

    def __init__(self, redis: aioredis.Redis, router: Router) -> None:
        self.redis = redis
        self.registry = router.registry

    def apply(self, data: bytes) -> None:
        try:
            change = RegistryChange.model_validate_json(data)
        except ValueError:
            log.warning("ignoring a malformed routing change")
            return
        if change.op == "put" and change.instance is not None:
            self.registry.put(change.instance)
        elif change.op == "remove":
            self.registry.remove(change.instance_id)

    async def reload(self) -> None:
        entries = await self.redis.hgetall(ROUTING_REGISTRY)
        infos: dict[str, RoutableInstance] = {}
        for raw in entries.values():
            try:
                info = RoutableInstance.model_validate_json(raw)
            except ValueError:
                continue
            infos[info.instance_id] = info
        self.registry.replace_all(infos)

    async def poll_load(self) -> None:
        instance_ids = list(self.registry.backends)
        if not instance_ids:
            return
        reports = await self.redis.hmget(INSTANCE_LOAD, instance_ids)
        for instance_id, raw in zip(instance_ids, reports, strict=True):
            if raw is None:
                continue
            try:
                report = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(report, dict):
                self.registry.update_load(instance_id, report)


class ChannelFollower:
    """Registry changes and key invalidations, pushed by the control plane. `subscribed` is set
    once the first subscription holds, so the first full read misses no change."""

    def __init__(self, redis: aioredis.Redis, sync: RegistrySync, keys: KeyCache) -> None:
        self.redis = redis
        self.sync = sync
        self.keys = keys
        self.subscribed = asyncio.Event()

    async def run(self, stopping: Stopping) -> None:
        while not stopping():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(ROUTING_CHANNEL, API_KEY_CHANNEL)
                # Messages may have been missed while disconnected: start from a clean slate.
                self.keys.invalidate_all()
                if self.subscribed.is_set():
                    await self.sync.reload()
                self.subscribed.set()
                while not stopping():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    data = message["data"]
                    if channel == API_KEY_CHANNEL:
                        self.keys.invalidate(data.decode() if isinstance(data, bytes) else data)
                    else:
                        self.sync.apply(data)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("lost the Redis subscription (%s); reconnecting", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()


class LoadPublisher:
    """Per deployment: this replica's queue and in-flight figures and its cumulative counters
    (`core.wire.GatewayLoad`) for the autoscaler; and, when a request queues for a deployment
    with no instance, the wake-up that lets the autoscaler start one at once."""

    def __init__(
        self,
        redis: aioredis.Redis,
        router: Router,
        deployments: DeploymentMap,
        replica_id: str,
        period_s: float,
    ) -> None:
        self.redis = redis
        self.router = router
        self.deployments = deployments
        self.replica_id = replica_id
        self.period_s = period_s
        self.started_at = time.time()
        self._waking: set[str] = set()
        self._wake_tasks: set[asyncio.Task[None]] = set()

    def wake(self, deployment_id: str) -> None:
        """Ask the autoscaler for capacity now (called on the request path: never waits)."""
        if deployment_id in self._waking:  # one wake-up in flight per deployment is enough
            return
        self._waking.add(deployment_id)
        task = asyncio.create_task(self._wake(deployment_id), name="autoscaler wake")
        self._wake_tasks.add(task)
        task.add_done_callback(self._wake_tasks.discard)

    async def _wake(self, deployment_id: str) -> None:
        try:
            # The load first, so the autoscaler's round sees the waiting request.
            await self.publish()
            await self.redis.publish(AUTOSCALER_WAKE_CHANNEL, deployment_id)
        except OUTAGES as exc:
            log.warning("could not wake the autoscaler of %s: %s", deployment_id, exc)
        finally:
            self._waking.discard(deployment_id)

    async def publish(self) -> None:
        now = time.time()
        now_mono = time.monotonic()
        registry = self.router.registry
        inflight = registry.inflight_by_deployment()
        for backend in registry.backends.values():
            metrics.INFLIGHT.labels(backend.info.model, backend.instance_id).set(backend.inflight)
        # Deployment id -> served name: each deployment's own queue and in-flight figures.
        names = {entry.id: entry.served_name for entry in self.deployments.entries()}
        for backend in registry.backends.values():
            names.setdefault(backend.info.deployment_id, backend.info.model)
        ttft = _ttft_buckets()
        pipe = self.redis.pipeline(transaction=False)
        for deployment_id, model in names.items():
            queue = self.router.queue(deployment_id)
            in_flight = inflight.get(deployment_id, 0)
            queue.sample_active(in_flight, now_mono)
            for wait in queue.drain_new_waits():
                metrics.QUEUE_WAIT.labels(model).observe(wait)
            metrics.QUEUE_LENGTH.labels(model).set(queue.length)
            c = queue.counters
            signal = GatewayLoad(
                ts=now,
                period_s=self.period_s,
                started_at=self.started_at,
                replica_id=self.replica_id,
                model=model,
                queue_length=queue.length,
                in_flight=in_flight,
                arrivals_total=c.arrivals,
                rejected_total=c.rejected,
                routed_at_once_total=c.routed_at_once,
                dequeued_total=c.dequeued,
                queue_wait_s_total=round(c.queue_wait_s, 6),
                completed_total=c.completed,
                prompt_tokens_total=c.prompt_tokens,
                output_tokens_total=c.output_tokens,
                active_request_s_total=round(c.active_request_s, 6),
                ttft_buckets=ttft.get(model, []),
            )
            key = gateway_load_key(deployment_id)
            pipe.hset(key, self.replica_id, signal.model_dump_json())
            pipe.expire(key, max(30, int(self.period_s * 10)))
        await pipe.execute()


_TTFT_BEYOND_S = 1e6


def _ttft_buckets() -> dict[str, list[tuple[float, int]]]:
    """The gateway's cumulative TTFT histogram per served name, as (upper bound, count)."""
    by_model: dict[str, list[tuple[float, int]]] = {}
    for family in metrics.TTFT.collect():
        for sample in family.samples:
            # +Inf is the count of all (JSON has no infinity): the last bound stands for it.
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                if math.isinf(bound):
                    bound = _TTFT_BEYOND_S
                by_model.setdefault(sample.labels["model"], []).append((bound, int(sample.value)))
    return by_model
