"""The gateways' window from two readings of cumulative counters."""

from __future__ import annotations

from core.load_window import gateway_window, live_reports
from core.wire import GatewayLoad


def report(ts: float, started: float = 0.0, **counters: object) -> GatewayLoad:
    fields: dict[str, object] = {"queue_length": 0, "in_flight": 0, **counters}
    return GatewayLoad(
        ts=ts,
        period_s=1,
        started_at=started,
        replica_id="r",
        model="m",
        **fields,  # type: ignore[arg-type]
    )


def test_rates_and_average_wait_over_the_window_count_requests_routed_at_once_as_zero() -> None:
    before = {
        "a": report(
            100,
            arrivals_total=10,
            routed_at_once_total=10,
            completed_total=8,
            prompt_tokens_total=6_000,
            output_tokens_total=1_200,
        )
    }
    now = {
        "a": report(
            160,
            arrivals_total=70,
            routed_at_once_total=40,  # 30 routed at once
            dequeued_total=30,  # 30 waited 4 s each
            queue_wait_s_total=120,
            completed_total=68,
            prompt_tokens_total=60_000,
            output_tokens_total=12_000,
            active_request_s_total=600,
            queue_length=2,
            in_flight=9,
        )
    }
    w = gateway_window(now, before)
    assert w.arrival_rate_rps == 1.0 and w.completion_rate_rps == 1.0
    assert w.queue_wait_avg_s == 2.0  # 120 s over 60 requests, half of them without a wait
    assert w.active_requests == 10.0  # 600 request-seconds over 60 s
    assert w.queued_requests == 2 and w.span_s == 60
    assert (w.prompt_tokens_rps, w.output_tokens_rps) == (900.0, 180.0)  # finished requests'


def test_replicas_add_up_and_a_restarted_one_gives_its_current_figures_only() -> None:
    before = {
        "a": report(0, arrivals_total=0),
        "b": report(0, started=-50, arrivals_total=500),
    }
    now = {
        "a": report(10, arrivals_total=20, active_request_s_total=30),
        "b": report(10, started=5, arrivals_total=3, in_flight=4, queue_length=1),  # restarted
    }
    w = gateway_window(now, before)
    assert w.arrival_rate_rps == 2.0  # b's counters went back to 0: no negative rate
    assert w.active_requests == 3.0 + 5  # a's average, b's current running + queued
    assert w.queued_requests == 1


def test_ttft_p95_from_the_histogram_difference() -> None:
    before = {"a": report(0, ttft_buckets=[(0.5, 100), (2.0, 100), (1e6, 100)])}
    # In the window: 10 first tokens, 9 under 0.5 s and one between 0.5 and 2 s.
    now = {"a": report(30, ttft_buckets=[(0.5, 109), (2.0, 110), (1e6, 110)])}
    assert gateway_window(now, before).ttft_p95_s == 2.0
    assert gateway_window(before, before).ttft_p95_s is None  # nothing in the window


def test_a_replica_that_stopped_publishing_is_ignored() -> None:
    fresh, stopped = report(100), report(90)
    assert list(live_reports({"a": fresh, "b": stopped}, now=100.5)) == ["a"]
