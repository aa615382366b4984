"""Per-deployment queues of requests waiting for capacity, and the counters the autoscaler reads.

FIFO per API key, keys served round-robin, so one key's burst cannot starve the others. The
router hands free capacity to the head of the queue (`Router.dispatch`). The counters are
cumulative and never reset (`QueueCounters`): the autoscaler differences two reports over the
window it wants, so no wait is lost between its rounds.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.routing.registry import Backend
    from gateway.routing.strategies import RoutedRequest


@dataclass(slots=True, eq=False)
class Waiter:
    key_id: str
    request: RoutedRequest
    enqueued: float
    future: asyncio.Future[Backend | None]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class QueueCounters:
    """Since the gateway started; see `core.wire.GatewayLoad` for what each one means."""

    arrivals: int = 0
    rejected: int = 0
    routed_at_once: int = 0
    dequeued: int = 0
    queue_wait_s: float = 0.0
    completed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    active_request_s: float = 0.0
    active_sampled_at: float | None = None  # monotonic time of the last `sample_active`


@dataclass(eq=False)
class ModelQueue:
    by_key: collections.OrderedDict[str, collections.deque[Waiter]] = field(
        default_factory=collections.OrderedDict
    )
    length: int = 0
    counters: QueueCounters = field(default_factory=QueueCounters)
    # Waits (s) not yet observed into the gateway's Prometheus histogram (`drain_new_waits`).
    _new_waits_s: list[float] = field(default_factory=list)

    def refused(self) -> None:
        self.counters.rejected += 1

    def waited(self, wait_s: float) -> None:
        self.counters.dequeued += 1
        self.counters.queue_wait_s += wait_s
        self._new_waits_s.append(wait_s)

    def sample_active(self, in_flight: int, now_mono: float) -> None:
        """Integrate running + queued requests since the previous sample (a step function)."""
        c = self.counters
        if c.active_sampled_at is not None:
            c.active_request_s += (in_flight + self.length) * (now_mono - c.active_sampled_at)
        c.active_sampled_at = now_mono

    def drain_new_waits(self) -> list[float]:
        waits, self._new_waits_s = self._new_waits_s, []
        return waits

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

    def head(self) -> Waiter | None:
        """The next waiter still waiting (keys in turn), left in place: `take_head` removes it."""
        while self.by_key:
            waiter = next(iter(self.by_key.values()))[0]
            if not waiter.future.done():
                return waiter
            self.remove(waiter)
        return None

    def take_head(self, waiter: Waiter) -> None:
        """Remove the head returned by `head`; its key goes to the back of the round."""
        key_id = waiter.key_id
        waiters = self.by_key[key_id]
        waiters.popleft()
        self.length -= 1
        if waiters:
            self.by_key.move_to_end(key_id)
        else:
            del self.by_key[key_id]
