"""The policies compared: ours (core/autoscaling.py, the real function), peers' published
defaults re-implemented from their documentation, static provisioning and a clairvoyant oracle.

Peers' rules (targets a user must set are given the instance's calibrated capacity, which
favours them):
- SkyServe (RequestRateAutoscaler): replicas = ceil(QPS over 60 s / target QPS per replica),
  applied once the wish has held 300 s (up) or 1200 s (down), launching replicas counted.
- KubeAI: replicas = ceil(in-flight requests averaged over 10 min / 100), up at once, down after
  the wish has held 30 s.
- Ray Serve: replicas = ceil(ongoing requests averaged over 30 s / 2), after 30 s (up) or
  600 s (down) of the wish.
- dstack: replicas = ceil(RPS over 60 s / target RPS), at most every 300 s (up) or 600 s (down)
  counted from the last scaling action (its behaviour in dstack #3824).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from bench.autoscale.model import Flight, InstanceModel, Request
from bench.autoscale.replay import FleetView
from core.autoscaling import (
    AutoscalingConfig,
    InstanceLoad,
    PolicyState,
    Signals,
    evaluate,
)


@dataclass
class Inventiv:
    """Drives `core.autoscaling.evaluate` with the signals a live autoscaler would read."""

    config: AutoscalingConfig
    min_instances: int
    max_instances: int
    state: PolicyState = field(default_factory=PolicyState)
    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        w = self.config.window_s
        prompt_tokens, output_tokens = view.token_rates(w)
        signals = Signals(
            instances=tuple(
                InstanceLoad(
                    id=e.id,
                    ready=e.is_ready(view.now),
                    created_at=e.ordered_at,
                    gpu_count=e.model.gpu_count,
                    active_requests=e.inflight,
                    gpu_utilization=view.utilization(e, w),
                )
                for e in view.engines
            ),
            queue_wait_avg_s=view.queue_wait_avg(w),
            active_requests=view.active_avg(w),
            queued_requests=view.queued,
            arrival_rate_rps=view.arrival_rate(w),
            completion_rate_rps=view.completion_rate(w),
            prompt_tokens_rps=prompt_tokens,
            output_tokens_rps=output_tokens,
            ttft_p95_s=view.ttft_p95(w),
        )
        decision, self.state = evaluate(
            self.config, self.min_instances, self.max_instances, signals, self.state, view.now
        )
        return decision.delta, list(decision.drain)


@dataclass
class Static:
    """Provisioned at peak from the start; never scales."""

    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        return 0, []


@dataclass
class _Wish:
    """Scale to `target` once the wish (up or down) has held for its delay, counted in rounds."""

    up_delay_s: float
    down_delay_s: float
    min_instances: int
    max_instances: int
    up_since: float | None = None
    down_since: float | None = None

    def apply(self, now: float, current: int, target: int) -> int:
        target = min(max(target, self.min_instances), self.max_instances)
        if target > current:
            self.down_since = None
            self.up_since = now if self.up_since is None else self.up_since
            if now - self.up_since >= self.up_delay_s:
                self.up_since = None
                return target - current
        elif target < current:
            self.up_since = None
            self.down_since = now if self.down_since is None else self.down_since
            if now - self.down_since >= self.down_delay_s:
                self.down_since = None
                return target - current
        else:
            self.up_since = self.down_since = None
        return 0


@dataclass
class SkyServe:
    target_qps: float
    wish: _Wish
    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        target = math.ceil(view.arrival_rate(60) / self.target_qps)
        return self.wish.apply(view.now, len(view.engines), target), []


@dataclass
class KubeAI:
    wish: _Wish
    target_requests: float = 100
    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        target = math.ceil(view.active_avg(600) / self.target_requests)
        return self.wish.apply(view.now, len(view.engines), target), []


@dataclass
class RayServe:
    wish: _Wish
    target_ongoing: float = 2
    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        target = math.ceil(view.active_avg(30) / self.target_ongoing)
        return self.wish.apply(view.now, len(view.engines), target), []


@dataclass
class Dstack:
    target_rps: float
    min_instances: int
    max_instances: int
    up_delay_s: float = 300
    down_delay_s: float = 600
    last_scaled: float = -math.inf
    boot_s: float | None = None
    interval_s: float | None = None

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        current = len(view.engines)
        target = math.ceil(view.arrival_rate(60) / self.target_rps)
        target = min(max(target, self.min_instances), self.max_instances)
        since = view.now - self.last_scaled
        if (target > current and since >= self.up_delay_s) or (
            target < current and since >= self.down_delay_s
        ):
            self.last_scaled = view.now
            return target - current, []
        return 0, []


@dataclass
class Oracle:
    """The lower bound: knows the whole trace, boots in no time, and holds at each moment the
    fewest instances with which the modelled requests meet the SLO.

    Every round (5 s, finer than any policy's) it tries instance counts on the replay's own
    model (`Replay.what_if`: the fleet and queue as they are, the round's arrivals, run until
    the last of them is due its first token) and keeps the smallest count with which every
    request due its first token meets the SLO; requests no instance could serve in time (a
    prompt whose prefill alone takes longer) and those already late do not count. A lower count
    than now must also hold for `hold_s` ahead: a drain followed by an order soon after bills
    both while the drained one finishes its requests. It starts from the current count, so most
    rounds cost two or three short what-if runs.
    """

    requests: list[Request]
    model: InstanceModel
    slo_ttft_s: float
    min_instances: int
    max_instances: int
    interval_s: float | None = 5.0
    hold_s: float = 15.0
    boot_s: float | None = 0.0
    trials: int = 0

    def __post_init__(self) -> None:
        self._times = [r.arrival for r in self.requests]

    def decide(self, view: FleetView) -> tuple[int, list[str]]:
        now = view.now
        start = bisect.bisect_right(self._times, now)
        round_s = view.replay.interval_s

        def meets(count: int, horizon: float) -> bool:
            self.trials += 1
            end = bisect.bisect_right(self._times, now + horizon)
            until = now + horizon + self.slo_ttft_s
            flights = view.replay.what_if(now, count, self.requests[start:end], until)
            return all(self._on_time(f, now) for f in flights)

        current = len(view.engines)
        count = min(max(current, self.min_instances), self.max_instances)
        if meets(count, round_s):
            while count > self.min_instances and meets(count - 1, max(round_s, self.hold_s)):
                count -= 1
        else:
            while count < self.max_instances:
                count += 1
                if meets(count, round_s):
                    break
        return count - current, []

    def _on_time(self, f: Flight, now: float) -> bool:
        due = f.req.arrival + self.slo_ttft_s
        if due < now or self.model.solo_ttft_s(f.req) > self.slo_ttft_s:
            return True  # late already, or late on any instance: no count helps
        return not f.refused and f.first_token - f.req.arrival <= self.slo_ttft_s
