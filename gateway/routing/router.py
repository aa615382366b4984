"""The router: registry + strategy + queue + health, as the proxy uses them.

Everything is keyed by deployment id (a served name is resolved within the key's project first:
`Registry.deployment_of`). `acquire_now` / `wait` give the proxy an instance with the request
counted on it; `release` gives it back and hands freed capacity to the deployment's queue.
Everything is synchronous and in memory: the hot path never waits on Redis or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from core.wire import RoutingStrategy
from gateway.routing.health import PassiveHealth
from gateway.routing.queue import ModelQueue, Waiter
from gateway.routing.registry import Backend, Registry
from gateway.routing.strategies import RoutedRequest, Strategy, build_strategies
from gateway.settings import GatewaySettings


class Router:
    def __init__(
        self,
        config: GatewaySettings,
        on_removed: Callable[[Backend], None] | None = None,
        engine_key: Callable[[str], str] | None = None,
        on_starved: Callable[[str], None] | None = None,
    ) -> None:
        self.queue_size = config.queue_size
        # Called when a request queues for a deployment with no instance (scale from zero).
        self._on_starved = on_starved or (lambda deployment_id: None)
        self.registry = Registry(
            config.max_inflight_per_gpu,
            on_added=self.dispatch,
            on_removed=self._removed,
            engine_key=engine_key,
        )
        self._on_removed = on_removed or (lambda backend: None)
        self.health = PassiveHealth(
            config.eject_after_failures, config.eject_s, on_readmitted=self.dispatch
        )
        self.strategies: dict[RoutingStrategy, Strategy] = build_strategies(config)
        self.queues: dict[str, ModelQueue] = {}
        # The registry's indexes, read on every request.
        self.backends = self.registry.backends
        self.by_deployment = self.registry.by_deployment

    def pick(
        self, deployment_id: str, request: RoutedRequest, exclude: Backend | None = None
    ) -> Backend | None:
        """Choose an instance and count the request on it, or None when none can take it now."""
        members = self.by_deployment.get(deployment_id)
        if not members:
            return None
        now_mono = time.monotonic()
        if len(members) == 1:  # the common small deployment: no scoring needed
            only = members[0]
            # PassiveHealth.usable, inline: this runs on every request.
            if only is exclude or only.inflight >= only.capacity or only.ejected_until > now_mono:
                return None
            only.inflight += 1
            return only
        candidates = [b for b in members if b is not exclude and PassiveHealth.usable(b, now_mono)]
        if not candidates:
            return None
        chosen = self.strategies[request.routing].pick(candidates, request)
        chosen.inflight += 1
        return chosen

    def release(self, backend: Backend) -> None:
        backend.inflight -= 1
        self.queue(backend.info.deployment_id).counters.completed += 1
        if backend.routable:
            self.dispatch(backend.info.deployment_id)

    def record_success(self, backend: Backend) -> None:
        self.health.record_success(backend)

    def record_failure(self, backend: Backend) -> bool:
        """True when this failure ejected the instance."""
        ejected = self.health.record_failure(backend)
        if ejected:  # an engine failing repeatedly has likely restarted, its cache empty
            self._forget(backend.instance_id)
        return ejected

    def _removed(self, backend: Backend) -> None:
        self._forget(backend.instance_id)
        self._on_removed(backend)

    def _forget(self, instance_id: str) -> None:
        """Strategies drop what they kept about an instance that left or was ejected."""
        for strategy in self.strategies.values():
            strategy.forget(instance_id)

    # ------------------------------------------------------------ queue

    def queue(self, deployment_id: str) -> ModelQueue:
        queue = self.queues.get(deployment_id)
        if queue is None:
            queue = self.queues[deployment_id] = ModelQueue()
        return queue

    def acquire_now(self, deployment_id: str, request: RoutedRequest) -> Backend | None:
        """The fast path: an instance right away, unless others already wait for this deployment."""
        queue = self.queue(deployment_id)
        if queue.length:
            return None
        backend = self.pick(deployment_id, request)
        if backend is not None:
            queue.counters.routed_at_once += 1
        return backend

    async def wait(
        self, deployment_id: str, key_id: str, request: RoutedRequest, deadline_s: float
    ) -> Backend | None:
        """Wait in the deployment's queue; None when the queue is full or the deadline passed."""
        queue = self.queue(deployment_id)
        if queue.length >= self.queue_size:
            queue.refused()
            return None
        loop = asyncio.get_running_loop()
        waiter = Waiter(key_id, request, time.monotonic(), loop.create_future())
        queue.push(waiter)
        waiter.timer = loop.call_later(deadline_s, self._expire, deployment_id, waiter)
        if not self.by_deployment.get(deployment_id):
            self._on_starved(deployment_id)
        self.dispatch(deployment_id)
        try:
            backend = await waiter.future
        except asyncio.CancelledError:
            # The client left: give back an instance handed over at the same moment.
            if waiter.future.done() and not waiter.future.cancelled():
                handed = waiter.future.result()
                if handed is not None:
                    self.release(handed)
            queue.remove(waiter)
            waiter.timer.cancel()
            raise
        if backend is None:
            queue.refused()
        return backend

    def _expire(self, deployment_id: str, waiter: Waiter) -> None:
        if waiter.future.done():
            return
        queue = self.queue(deployment_id)
        queue.remove(waiter)
        queue.waited(time.monotonic() - waiter.enqueued)
        waiter.future.set_result(None)

    def dispatch(self, deployment_id: str) -> None:
        """Hand free capacity to waiting requests: keys in turn, each key's oldest first."""
        queue = self.queues.get(deployment_id)
        if queue is None or not queue.length:
            return
        now = time.monotonic()
        while (waiter := queue.head()) is not None:
            backend = self.pick(deployment_id, waiter.request)
            if backend is None:
                return
            queue.take_head(waiter)
            if waiter.timer is not None:
                waiter.timer.cancel()
            queue.waited(now - waiter.enqueued)
            waiter.future.set_result(backend)
