"""The gateways' load over a window, from two readings of their cumulative counters (pure).

Each gateway replica publishes counters that only grow (`core.wire.GatewayLoad`); the autoscaler
keeps its past readings and differences the current one against the reading from one window
ago. A replica that restarted (another `started_at`, or counters that went down) counts from
its start; a replica seen for the first time contributes its current figures but no rates.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.wire import GatewayLoad


@dataclass(frozen=True)
class GatewayWindow:
    queue_wait_avg_s: float  # mean wait of the requests routed (0 for those routed at once)
    active_requests: float  # running + queued, averaged over the window
    queued_requests: float  # waiting now
    arrival_rate_rps: float
    completion_rate_rps: float
    prompt_tokens_rps: float  # prompt tokens per second of the requests that finished
    output_tokens_rps: float  # output tokens per second of the requests that finished
    ttft_p95_s: float | None  # None: no first token in the window
    span_s: float  # the longest window actually covered by a replica

    def as_inputs(self) -> dict[str, float | None]:
        return {
            "queue_wait_avg_s": round(self.queue_wait_avg_s, 3),
            "active_requests": round(self.active_requests, 3),
            "queued_requests": self.queued_requests,
            "arrival_rate_rps": round(self.arrival_rate_rps, 3),
            "completion_rate_rps": round(self.completion_rate_rps, 3),
            "prompt_tokens_rps": round(self.prompt_tokens_rps, 1),
            "output_tokens_rps": round(self.output_tokens_rps, 1),
            "ttft_p95_s": None if self.ttft_p95_s is None else round(self.ttft_p95_s, 3),
            "window_s": round(self.span_s, 1),
        }


def live_reports(reports: dict[str, GatewayLoad], now: float) -> dict[str, GatewayLoad]:
    """The reports of replicas still publishing (each stale after a few of its own periods)."""
    return {r: load for r, load in reports.items() if now - load.ts <= load.stale_after_s()}


def _baseline(current: GatewayLoad, before: GatewayLoad | None) -> GatewayLoad | None:
    if before is None or before.started_at != current.started_at:
        return None
    if before.arrivals_total > current.arrivals_total or before.ts >= current.ts:
        return None
    return before


def gateway_window(
    current: dict[str, GatewayLoad], before: dict[str, GatewayLoad]
) -> GatewayWindow:
    waited = routed = 0.0
    active = queued = arrivals = completions = prompt_tokens = output_tokens = 0.0
    span = 0.0
    ttft: dict[float, int] = {}
    for replica, now in current.items():
        queued += now.queue_length
        base = _baseline(now, before.get(replica))
        if base is None:
            active += now.in_flight + now.queue_length
            continue
        dt = now.ts - base.ts
        span = max(span, dt)
        waited += now.queue_wait_s_total - base.queue_wait_s_total
        routed += (now.routed_at_once_total - base.routed_at_once_total) + (
            now.dequeued_total - base.dequeued_total
        )
        active += (now.active_request_s_total - base.active_request_s_total) / dt
        arrivals += (now.arrivals_total - base.arrivals_total) / dt
        completions += (now.completed_total - base.completed_total) / dt
        prompt_tokens += (now.prompt_tokens_total - base.prompt_tokens_total) / dt
        output_tokens += (now.output_tokens_total - base.output_tokens_total) / dt
        earlier = dict(base.ttft_buckets)
        for bound, count in now.ttft_buckets:
            ttft[bound] = ttft.get(bound, 0) + count - earlier.get(bound, 0)
    return GatewayWindow(
        queue_wait_avg_s=waited / routed if routed else 0.0,
        active_requests=active,
        queued_requests=queued,
        arrival_rate_rps=arrivals,
        completion_rate_rps=completions,
        prompt_tokens_rps=prompt_tokens,
        output_tokens_rps=output_tokens,
        ttft_p95_s=_quantile(ttft, 0.95),
        span_s=span,
    )


def _quantile(cumulative: dict[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile of a cumulative histogram."""
    if not cumulative:
        return None
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    for bound in bounds:
        if cumulative[bound] >= q * total:
            return bound
    return bounds[-1]
