"""Replay of a trace against a fleet of modelled instances driven by one autoscaling policy.

Every `interval_s` the policy sees what a live autoscaler sees (a `FleetView`: windowed arrival
rate, active requests, queue wait, TTFT, per-instance load and busy share) and answers with a
change; the replay orders servers (ready after `boot_s`, billed from the order) or drains them
(no new requests, destroyed once their requests finish, billed until then).
"""

from __future__ import annotations

import bisect
import collections
import csv
import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bench.autoscale.model import Engine, Flight, InstanceModel, Request

COPY_SHIFT_S = 10.0


@dataclass(frozen=True)
class ReplaySettings:
    slo_ttft_s: float = 2.0
    boot_s: float = 180.0
    interval_s: float = 15.0  # INVENTIV_AUTOSCALE_INTERVAL_S default
    min_instances: int = 1
    max_instances: int = 20


def load_trace(path: str, compress: float = 1.0, copies: int = 1) -> list[Request]:
    """Rows of TIMESTAMP,ContextTokens,GeneratedTokens; arrivals from 0, divided by `compress`.

    `copies` > 1 overlays the trace that many times, each copy COPY_SHIFT_S later than the one
    before and wrapped around the end: the same shape over time at a multiple of the load.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = [datetime.fromisoformat(r["TIMESTAMP"].strip()[:26]) for r in rows]
    start = min(stamps)
    span = (max(stamps) - start).total_seconds() / compress + 1e-3
    requests = [
        Request(
            ((s - start).total_seconds() / compress + k * COPY_SHIFT_S) % span,
            max(1, int(r["ContextTokens"])),
            max(1, int(r["GeneratedTokens"])),
        )
        for s, r in zip(stamps, rows, strict=True)
        for k in range(copies)
    ]
    return sorted(requests, key=lambda r: r.arrival)


class FleetView:
    """What an autoscaler can measure at `now`."""

    def __init__(self, replay: Replay, now: float) -> None:
        self.replay = replay
        self.now = now
        self.model = replay.model

    @property
    def engines(self) -> list[Engine]:
        """Instances booting or serving (not draining)."""
        return [e for e in self.replay.engines if e.draining_at is None and e.terminated_at is None]

    @property
    def queued(self) -> int:
        return len(self.replay.queue)

    @property
    def active(self) -> int:
        return sum(e.inflight for e in self.replay.engines) + len(self.replay.queue)

    def _since(self, times: Sequence[float], window: float) -> int:
        return len(times) - bisect.bisect_right(times, self.now - window)

    def arrival_rate(self, window: float) -> float:
        return self._since(self.replay.arrival_times, window) / window

    def active_avg(self, window: float) -> float:
        """Running + queued requests, time-averaged over the window."""
        r = self.replay
        r.integrate(self.now)
        start = max(0.0, self.now - window)
        i = bisect.bisect_left(r.tick_times, start)
        if i >= len(r.tick_times) or self.now - r.tick_times[i] <= 0:
            return float(self.active)
        return (r.active_integral - r.tick_integrals[i]) / (self.now - r.tick_times[i])

    def completion_rate(self, window: float) -> float:
        return self._since(self.replay.done_times, window) / window

    def token_rates(self, window: float) -> tuple[float, float]:
        """Prompt and output tokens per second of the requests that finished in the window."""
        r = self.replay
        n = self._since(r.done_times, window)
        prompt, output = r.done_prompt_tokens, r.done_output_tokens
        return (prompt[-1] - prompt[-1 - n]) / window, (output[-1] - output[-1 - n]) / window

    def queue_wait_avg(self, window: float) -> float:
        """Mean queue wait of the requests that left the queue in the window (0 if none did)."""
        r = self.replay
        n = self._since(r.exit_times, window)
        return sum(r.exit_waits[-n:]) / n if n else 0.0

    def ttft_p95(self, window: float) -> float | None:
        r = self.replay
        n = self._since(r.done_times, window)
        return percentile(r.token_ttfts[-n:], 0.95) if n else None

    def utilization(self, engine: Engine, window: float) -> float | None:
        """Busy share over the window; None until the instance has served a whole interval."""
        served = self.now - engine.ready_at
        if served < self.replay.interval_s:
            return None
        span = min(window, served)
        history = self.replay.busy_history[engine.id]
        i = bisect.bisect_left(history, (self.now - span - 1e-9, -math.inf))
        t0, busy0 = history[i] if i < len(history) else (self.now, engine.busy_s)
        return (engine.busy_s - busy0) / (self.now - t0) if self.now > t0 else None


class Policy(Protocol):
    boot_s: float | None  # None: the replay's boot time
    interval_s: float | None  # its round; None: the replay's

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        """(change in instance count, instances to drain for a negative change, may be [])."""
        ...


class _Hold:
    """No change: the policy of a what-if run, which has no ticks anyway."""

    boot_s: float | None = 0.0
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        return 0, []


def drain_candidates(engines: list[Engine]) -> list[Engine]:
    """Least loaded first; ties: the newest (a booting server has no load and goes first)."""
    return sorted(engines, key=lambda e: (e.inflight, -e.ordered_at))


@dataclass
class TimelinePoint:
    t: float
    arrivals_rps: float
    instances: int  # ordered and not draining
    ready: int
    ttft_p50_s: float | None


@dataclass
class Outcome:
    gpu_hours: float
    slo_attainment: float
    ttft_p50_s: float
    ttft_p99_s: float
    queue_wait_p99_s: float
    refused: int
    scale_actions: int
    timeline: list[TimelinePoint] = field(default_factory=list)

    def figures(self) -> dict[str, float | int]:
        return {
            "gpu_hours": round(self.gpu_hours, 3),
            "slo_attainment": round(self.slo_attainment, 4),
            "ttft_p50_s": round(self.ttft_p50_s, 3),
            "ttft_p99_s": round(self.ttft_p99_s, 3),
            "queue_wait_p99_s": round(self.queue_wait_p99_s, 3),
            "refused": self.refused,
            "scale_actions": self.scale_actions,
        }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Replay:
    def __init__(
        self,
        requests: list[Request],
        policy: Policy,
        settings: ReplaySettings,
        model: InstanceModel | None = None,
        initial_instances: int = 1,
    ) -> None:
        self.requests = requests
        self.policy = policy
        self.settings = settings
        self.model = model or InstanceModel()
        self.boot_s = settings.boot_s if policy.boot_s is None else policy.boot_s
        self.interval_s = policy.interval_s or settings.interval_s
        self.engines: list[Engine] = []
        self.queue: collections.deque[Flight] = collections.deque()
        self.flights: list[Flight] = []
        self.arrival_times: list[float] = []
        self.exit_times: list[float] = []
        self.exit_waits: list[float] = []
        self.done_times: list[float] = []
        self.token_ttfts: list[float] = []
        # Prompt and output tokens of the requests finished, cumulative (the gateway's usage).
        self.done_prompt_tokens: list[int] = [0]
        self.done_output_tokens: list[int] = [0]
        self.tick_times: list[float] = []
        self.tick_integrals: list[float] = []
        self.busy_history: dict[str, list[tuple[float, float]]] = {}
        self.active_integral = 0.0
        self._integrated_to = 0.0
        self.actions = 0
        self.timeline: list[TimelinePoint] = []
        self._next_arrival = 0
        self._next_tick = 0.0
        for _ in range(initial_instances):
            self._order(0.0, ready_at=0.0)

    # -- bookkeeping ---------------------------------------------------------------------------

    def integrate(self, now: float) -> None:
        active = sum(e.inflight for e in self.engines) + len(self.queue)
        self.active_integral += active * (now - self._integrated_to)
        self._integrated_to = now

    def _order(self, now: float, ready_at: float) -> None:
        engine = Engine(self.model, f"i{len(self.engines)}", now, ready_at, t=ready_at)
        self.engines.append(engine)
        self.busy_history[engine.id] = []

    def _retire_idle(self, now: float) -> None:
        for e in self.engines:
            if e.draining_at is not None and e.terminated_at is None and e.idle():
                e.terminated_at = max(now, e.draining_at)

    def _finished(self, done: list[Flight]) -> None:
        for f in done:
            # Completions come in time order (the loop takes the earliest event first), and a
            # request's TTFT is counted in the window where it finishes.
            self.done_times.append(f.done)
            self.token_ttfts.append(f.first_token - f.req.arrival)
            self.done_prompt_tokens.append(self.done_prompt_tokens[-1] + f.req.prompt)
            self.done_output_tokens.append(self.done_output_tokens[-1] + f.req.output)

    # -- the gateway ---------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        while self.queue:
            open_ = [
                e for e in self.engines if e.is_ready(now) and e.inflight < self.model.max_inflight
            ]
            if not open_:
                return
            engine = min(open_, key=lambda e: e.inflight)
            flight = self.queue.popleft()
            flight.dispatched = now
            self.exit_times.append(now)
            self.exit_waits.append(now - flight.req.arrival)
            done: list[Flight] = []
            engine.advance(now, done)
            self._finished(done)
            engine.add(flight, now)

    def _arrive(self, req: Request) -> None:
        flight = Flight(req)
        self.flights.append(flight)
        self.arrival_times.append(req.arrival)
        if len(self.queue) >= self.model.queue_size:
            flight.refused = True
            return
        self.queue.append(flight)
        self._dispatch(req.arrival)

    def _expire(self, now: float) -> None:
        while self.queue and self.queue[0].req.arrival + self.model.queue_deadline_s <= now:
            flight = self.queue.popleft()
            flight.refused = True
            self.exit_times.append(now)
            self.exit_waits.append(now - flight.req.arrival)

    # -- the autoscaler ------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.integrate(now)
        for e in self.engines:
            if e.terminated_at is None:
                done: list[Flight] = []
                e.advance(now, done)
                self._finished(done)
                self.busy_history[e.id].append((now, e.busy_s))
        self.tick_times.append(now)
        self.tick_integrals.append(self.active_integral)
        view = FleetView(self, now)
        delta, drain = self.policy.decide(view)
        alive = view.engines
        delta = max(
            min(delta, self.settings.max_instances - len(alive)),
            self.settings.min_instances - len(alive),
        )
        if delta > 0:
            for _ in range(delta):
                self._order(now, now + self.boot_s)
            self.actions += 1
        elif delta < 0:
            by_id = {e.id: e for e in alive}
            chosen = [by_id[i] for i in drain if i in by_id] or drain_candidates(alive)
            for e in chosen[:-delta]:
                e.draining_at = now
            self.actions += 1
            self._retire_idle(now)
        self._dispatch(now)
        n = self._since_tick(self.arrival_times, now)
        recent = self.token_ttfts[len(self.token_ttfts) - self._since_tick(self.done_times, now) :]
        self.timeline.append(
            TimelinePoint(
                now,
                n / self.interval_s,
                len(alive) + max(delta, 0) - max(-delta, 0),
                sum(1 for e in view.engines if e.is_ready(now)),
                percentile(recent, 0.5) if recent else None,
            )
        )

    def _since_tick(self, times: list[float], now: float) -> int:
        return len(times) - bisect.bisect_right(times, now - self.interval_s)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        self._run(math.inf, ticks=True)
        return self._outcome()

    def _run(self, until: float, ticks: bool) -> None:
        """Process events in time order up to `until` (arrivals before ticks at equal times)."""
        last_arrival = self.requests[-1].arrival if self.requests else 0.0
        while True:
            live = [e for e in self.engines if e.terminated_at is None]
            engine_at, engine = min(
                ((e.next_event(), e) for e in live), default=(math.inf, None), key=lambda p: p[0]
            )
            boot_at = min((e.ready_at for e in live if e.ready_at > e.t), default=math.inf)
            i = self._next_arrival
            arrival_at = self.requests[i].arrival if i < len(self.requests) else math.inf
            expire_at = (
                self.queue[0].req.arrival + self.model.queue_deadline_s if self.queue else math.inf
            )
            tick_at = (
                self._next_tick
                if ticks and self._next_tick <= last_arrival + self.interval_s
                else math.inf
            )
            now = min(engine_at, boot_at, arrival_at, expire_at, tick_at)
            if now == math.inf or now > until:
                break
            self.integrate(now)
            if now == engine_at and engine is not None:
                done: list[Flight] = []
                engine.advance(now, done)
                self._finished(done)
                self._retire_idle(now)
                self._dispatch(now)
            elif now == boot_at:
                for e in live:
                    if e.ready_at == now:
                        e.t = now
                self._dispatch(now)
            elif now == expire_at:
                self._expire(now)
            elif now == arrival_at:
                self._arrive(self.requests[i])
                self._next_arrival += 1
            else:
                self._tick(now)
                self._next_tick += self.interval_s

    # -- what-if, for a clairvoyant policy -------------------------------------------------------

    def what_if(
        self, now: float, count: int, arrivals: list[Request], until: float
    ) -> list[Flight]:
        """The fleet and queue as they are at `now`, `count` instances serving from now on (new
        ones ready at once, the surplus drained as a tick drains), `arrivals` coming: run to
        `until` on copies, leaving this replay as it was. Returns the requests whose first token
        is still to come at `now` (queued, waiting, in prefill) and the new ones, as they fared.
        """
        copies: dict[int, Flight] = {}

        def cp(f: Flight) -> Flight:
            c = copies.get(id(f))
            if c is None:
                c = copies[id(f)] = dataclasses.replace(f)
            return c

        trial = Replay(arrivals, _Hold(), self.settings, self.model, initial_instances=0)
        for e in self.engines:
            if e.terminated_at is not None:
                continue
            copy = dataclasses.replace(
                e,
                waiting=collections.deque(cp(f) for f in e.waiting),
                prefill=collections.deque(cp(f) for f in e.prefill),
                decoding=[(v, seq, cp(f)) for v, seq, f in e.decoding],
                step_chunk=[(cp(f), done) for f, done in e.step_chunk],
            )
            trial.engines.append(copy)
        trial.queue = collections.deque(cp(f) for f in self.queue)
        pending = [cp(f) for f in self._first_token_pending()]
        trial._integrated_to = now
        alive = [e for e in trial.engines if e.draining_at is None]
        for k in range(count - len(alive)):
            trial.engines.append(Engine(self.model, f"w{k}", now, now, t=now))
        for e in drain_candidates(alive)[: max(0, len(alive) - count)]:
            e.draining_at = now
        trial._retire_idle(now)
        trial._dispatch(now)
        trial._run(until, ticks=False)
        return pending + trial.flights

    def _first_token_pending(self) -> list[Flight]:
        flights = {id(f): f for f in self.queue}
        for e in self.engines:
            if e.terminated_at is None:
                for f in [*e.waiting, *e.prefill, *(f for f, _ in e.step_chunk)]:
                    flights[id(f)] = f
        return list(flights.values())

    def _outcome(self) -> Outcome:
        end = max([f.done for f in self.flights if not math.isnan(f.done)], default=0.0)
        end = max(end, self.requests[-1].arrival if self.requests else 0.0)
        seconds = sum(
            (e.terminated_at if e.terminated_at is not None else end) - e.ordered_at
            for e in self.engines
        )
        served = [f for f in self.flights if not f.refused]
        ttfts = [f.first_token - f.req.arrival for f in served]
        waits = [f.dispatched - f.req.arrival for f in served]
        within = sum(1 for t in ttfts if t <= self.settings.slo_ttft_s)
        return Outcome(
            gpu_hours=seconds * self.model.gpu_count / 3600,
            slo_attainment=within / len(self.flights) if self.flights else 1.0,
            ttft_p50_s=percentile(ttfts, 0.5),
            ttft_p99_s=percentile(ttfts, 0.99),
            queue_wait_p99_s=percentile(waits, 0.99),
            refused=len(self.flights) - len(served),
            scale_actions=self.actions,
            timeline=self.timeline,
        )


def poisson_like(requests: list[Request], rate: float, seconds: float, seed: int) -> list[Request]:
    """Poisson arrivals at `rate` with request sizes drawn from `requests` (deterministic)."""
    rng = random.Random(seed)
    out: list[Request] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        size = rng.choice(requests)
        out.append(Request(t, size.prompt, size.output))
