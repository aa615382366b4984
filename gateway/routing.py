"""Routing: the in-memory registry of ready instances, the choice of an instance per request,
passive health (ejection) and the per-model queue used when every instance is saturated.

Everything here is synchronous and in memory: the hot path never waits on Redis or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.wire import RoutableInstance


@dataclass(slots=True, eq=False)
class Backend:
    """A ready instance as the gateway sees it: exact local in-flight count, reported engine load."""

    info: RoutableInstance
    capacity: int  # local in-flight requests at which the instance counts as saturated
    inflight: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0  # monotonic time
    # Engine load from heartbeats (vLLM's num_requests_running / num_requests_waiting /
    # kv_cache_usage_perc) and the epoch time it was measured.
    reported_at: float = 0.0
    reported_running: float = 0.0
    reported_waiting: float = 0.0
    reported_kv_usage: float = 0.0
    routable: bool = True  # False once removed from the registry (in-flight requests finish)

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    def score(self, now: float, stale_s: float) -> float:
        """Expected load per GPU; lower is better.

        Local in-flight counts are exact for this replica; the engine's own counts also include
        other replicas' requests, so the larger of the two estimates the running load. Requests
        waiting in the engine count twice (the engine is already saturated), and a full KV cache
        inflates the score (the engine would preempt)."""
        load = float(self.inflight)
        kv = 0.0
        if now - self.reported_at <= stale_s:
            load = max(load, self.reported_running + self.reported_waiting)
            load += self.reported_waiting
            kv = self.reported_kv_usage
        return load / max(1, self.info.gpu_count) * (1.0 + kv)


def _rank(session: str, instance_id: str) -> bytes:
    """Rendezvous-hash weight: the same on every gateway replica (unlike Python's hash())."""
    return hashlib.blake2b(f"{session}\x00{instance_id}".encode(), digest_size=8).digest()


@dataclass(slots=True, eq=False)
class Waiter:
    key_id: str
    session: str | None
    enqueued: float
    future: asyncio.Future[Backend | None]
    exclude: Backend | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class ModelQueue:
    """Requests waiting for capacity on one model: FIFO per API key, keys served round-robin,
    so one key's burst cannot starve the others."""

    by_key: collections.OrderedDict[str, collections.deque[Waiter]] = field(
        default_factory=collections.OrderedDict
    )
    length: int = 0
    # Waits (ms) of requests that left the queue since the last load report, and counters.
    waits_ms: list[float] = field(default_factory=list)
    arrivals: int = 0
    rejected: int = 0

    def push(self, waiter: Waiter) -> None:
        queue = self.by_key.get(waiter.key_id)
        if queue is None:
            queue = self.by_key[waiter.key_id] = collections.deque()
        queue.append(waiter)
        self.length += 1

    def remove(self, waiter: Waiter) -> None:
        queue = self.by_key.get(waiter.key_id)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        self.length -= 1
        if not queue:
            del self.by_key[waiter.key_id]


class Router:
    def __init__(
        self,
        *,
        max_inflight_per_gpu: int,
        sticky_load_factor: float,
        load_stale_s: float,
        eject_after_failures: int,
        eject_s: float,
        queue_size: int,
        on_removed: Callable[[Backend], None] | None = None,
    ) -> None:
        self.max_inflight_per_gpu = max_inflight_per_gpu
        self.sticky_load_factor = sticky_load_factor
        self.load_stale_s = load_stale_s
        self.eject_after_failures = eject_after_failures
        self.eject_s = eject_s
        self.queue_size = queue_size
        self.on_removed = on_removed
        self.backends: dict[str, Backend] = {}
        self.by_model: dict[str, list[Backend]] = {}
        self.queues: dict[str, ModelQueue] = {}
        self._turn = 0  # rotates the start of the scan so ties spread over instances

    # ------------------------------------------------------------ registry

    def put(self, info: RoutableInstance) -> None:
        current = self.backends.get(info.instance_id)
        if current is not None:
            if current.info == info:
                return
            # Same instance, new description: update in place so in-flight counts stay exact.
            if current.info.model != info.model:
                self._unindex(current)
                self.by_model.setdefault(info.model, []).append(current)
            current.info = info
            current.capacity = self.max_inflight_per_gpu * max(1, info.gpu_count)
        else:
            backend = Backend(
                info=info, capacity=self.max_inflight_per_gpu * max(1, info.gpu_count)
            )
            self.backends[info.instance_id] = backend
            self.by_model.setdefault(info.model, []).append(backend)
        self.dispatch(info.model)

    def remove(self, instance_id: str) -> None:
        backend = self.backends.pop(instance_id, None)
        if backend is None:
            return
        backend.routable = False
        self._unindex(backend)
        if self.on_removed is not None:
            self.on_removed(backend)

    def replace_all(self, infos: dict[str, RoutableInstance]) -> None:
        for instance_id in [i for i in self.backends if i not in infos]:
            self.remove(instance_id)
        for info in infos.values():
            self.put(info)

    def _unindex(self, backend: Backend) -> None:
        members = self.by_model.get(backend.info.model)
        if members is None:
            return
        try:
            members.remove(backend)
        except ValueError:
            return
        if not members:
            del self.by_model[backend.info.model]

    def update_load(self, instance_id: str, report: dict[str, float]) -> None:
        backend = self.backends.get(instance_id)
        if backend is None:
            return
        try:
            backend.reported_at = float(report.get("ts", 0.0))
            backend.reported_running = float(report.get("requests_running") or 0.0)
            backend.reported_waiting = float(report.get("requests_waiting") or 0.0)
            backend.reported_kv_usage = min(1.0, float(report.get("kv_cache_usage") or 0.0))
        except (TypeError, ValueError):
            backend.reported_at = 0.0

    def models(self) -> list[str]:
        return list(self.by_model)

    # ------------------------------------------------------------ choice

    def _available(self, model: str, exclude: Backend | None, now_mono: float) -> list[Backend]:
        members = self.by_model.get(model)
        if not members:
            return []
        return [
            b
            for b in members
            if b is not exclude and b.inflight < b.capacity and b.ejected_until <= now_mono
        ]

    def pick(
        self, model: str, session: str | None = None, exclude: Backend | None = None
    ) -> Backend | None:
        """Choose an instance and count the request on it, or None when none can take it now."""
        members = self.by_model.get(model)
        if not members:
            return None
        now_mono = time.monotonic()
        if len(members) == 1:  # the common small deployment: no scoring needed
            only = members[0]
            if only is exclude or only.inflight >= only.capacity or only.ejected_until > now_mono:
                return None
            only.inflight += 1
            return only
        candidates = self._available(model, exclude, now_mono)
        if not candidates:
            return None
        now = time.time()
        chosen: Backend | None = None
        if session is not None and len(candidates) > 1:
            chosen = self._pick_sticky(candidates, session, now)
        if chosen is None:
            count = len(candidates)
            self._turn = (self._turn + 1) % count
            best_score = math.inf
            for offset in range(count):
                backend = candidates[(self._turn + offset) % count]
                score = backend.score(now, self.load_stale_s)
                if score < best_score:
                    best_score = score
                    chosen = backend
        assert chosen is not None
        chosen.inflight += 1
        return chosen

    def _pick_sticky(self, candidates: list[Backend], session: str, now: float) -> Backend | None:
        """Consistent hashing with bounded load (rendezvous order): the session's preferred
        instance unless its load would exceed `sticky_load_factor` x the fair share of its
        capacity, then the next in the session's order."""
        stale = self.load_stale_s
        loads = [b.score(now, stale) * max(1, b.info.gpu_count) for b in candidates]
        total_load = sum(loads) + 1.0
        total_gpus = sum(max(1, b.info.gpu_count) for b in candidates)
        ranked = sorted(
            zip(candidates, loads, strict=True),
            key=lambda pair: _rank(session, pair[0].instance_id),
            reverse=True,
        )
        for backend, load in ranked:
            fair = total_load * max(1, backend.info.gpu_count) / total_gpus
            if load + 1.0 <= math.ceil(self.sticky_load_factor * fair):
                return backend
        return None

    def release(self, backend: Backend) -> None:
        backend.inflight -= 1
        if backend.routable:
            self.dispatch(backend.info.model)

    # ------------------------------------------------------------ passive health

    def record_success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0

    def record_failure(self, backend: Backend) -> None:
        backend.consecutive_failures += 1
        if backend.consecutive_failures >= self.eject_after_failures:
            backend.consecutive_failures = 0
            backend.ejected_until = time.monotonic() + self.eject_s
            asyncio.get_running_loop().call_later(self.eject_s, self.dispatch, backend.info.model)

    # ------------------------------------------------------------ queue

    def queue(self, model: str) -> ModelQueue:
        queue = self.queues.get(model)
        if queue is None:
            queue = self.queues[model] = ModelQueue()
        return queue

    def acquire_now(self, model: str, session: str | None) -> Backend | None:
        """The fast path: an instance right away, unless others already wait for this model."""
        queue = self.queues.get(model)
        if queue is not None and queue.length:
            return None
        return self.pick(model, session)

    async def wait(
        self, model: str, key_id: str, session: str | None, deadline_s: float
    ) -> Backend | None:
        """Wait in the model's queue; None when the queue is full or the deadline passed."""
        queue = self.queue(model)
        if queue.length >= self.queue_size:
            queue.rejected += 1
            return None
        loop = asyncio.get_running_loop()
        waiter = Waiter(key_id, session, time.monotonic(), loop.create_future())
        queue.push(waiter)
        waiter.timer = loop.call_later(deadline_s, self._expire, model, waiter)
        self.dispatch(model)
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
            queue.rejected += 1
        return backend

    def _expire(self, model: str, waiter: Waiter) -> None:
        if waiter.future.done():
            return
        queue = self.queue(model)
        queue.remove(waiter)
        queue.waits_ms.append((time.monotonic() - waiter.enqueued) * 1000)
        waiter.future.set_result(None)

    def dispatch(self, model: str) -> None:
        """Hand free capacity to waiting requests: keys in turn, each key's oldest first."""
        queue = self.queues.get(model)
        if queue is None or not queue.length:
            return
        now = time.monotonic()
        while queue.by_key:
            key_id, waiters = next(iter(queue.by_key.items()))
            waiter = waiters[0]
            if waiter.future.done():
                queue.remove(waiter)
                continue
            backend = self.pick(model, waiter.session)
            if backend is None:
                return
            waiters.popleft()
            queue.length -= 1
            if waiters:
                queue.by_key.move_to_end(key_id)
            else:
                del queue.by_key[key_id]
            if waiter.timer is not None:
                waiter.timer.cancel()
            queue.waits_ms.append((now - waiter.enqueued) * 1000)
            waiter.future.set_result(backend)

    def inflight_by_deployment(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for backend in self.backends.values():
            deployment = backend.info.deployment_id
            totals[deployment] = totals.get(deployment, 0) + backend.inflight
        return totals
