"""Per-deployment queues of requests waiting for capacity, and the counters the autoscaler reads.

FIFO per API key, keys served round-robin, so one key's burst cannot starve the others. The
router hands free capacity to the head of the queue (`Router.dispatch`); the load publisher takes
the counters once per period with `take_window`.
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


@dataclass(slots=True, frozen=True)
class QueueWindow:
    """What happened in one deployment's queue since the previous window."""

    length: int
    waits_ms: list[float]  # sorted
    arrivals: int
    rejected: int


@dataclass(eq=False)
class ModelQueue:
    by_key: collections.OrderedDict[str, collections.deque[Waiter]] = field(
        default_factory=collections.OrderedDict
    )
    length: int = 0
    # Since the last window: waits (ms) of requests that left the queue, arrivals, refusals.
    _waits_ms: list[float] = field(default_factory=list)
    _arrivals: int = 0
    _rejected: int = 0

    def arrived(self) -> None:
        """A request for this deployment came in (queued or not): the arrival rate's numerator."""
        self._arrivals += 1

    def refused(self) -> None:
        self._rejected += 1

    def waited(self, wait_ms: float) -> None:
        self._waits_ms.append(wait_ms)

    def take_window(self) -> QueueWindow:
        window = QueueWindow(self.length, sorted(self._waits_ms), self._arrivals, self._rejected)
        self._waits_ms = []
        self._arrivals = 0
        self._rejected = 0
        return window

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
