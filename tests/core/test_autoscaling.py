"""The autoscaling policy, a pure function: every branch an operator relies on."""

from __future__ import annotations

from core.autoscaling import AutoscalingPolicy, LoadSnapshot, decide

POLICY = AutoscalingPolicy(
    min_instances=1,
    max_instances=4,
    target_in_flight_per_instance=8,
    max_queue_wait_ms=2000,
    scale_up_cooldown_s=60,
    scale_down_cooldown_s=300,
)
LONG_AGO = 10_000.0


def load(ready: int, starting: int = 0, in_flight: float = 0, queue: float = 0, wait: float = 0):  # type: ignore[no-untyped-def]
    return LoadSnapshot(ready, starting, in_flight, queue, wait)


def test_below_minimum_starts_the_missing_instances() -> None:
    d = decide(POLICY, load(0), since_scale_up_s=0, since_scale_down_s=0)
    assert d.delta == 1 and "minimum" in d.reason


def test_above_maximum_drains_the_excess() -> None:
    d = decide(POLICY, load(6), since_scale_up_s=LONG_AGO, since_scale_down_s=0)
    assert d.delta == -2


def test_in_flight_over_target_scales_up_to_what_is_needed_within_max() -> None:
    d = decide(
        POLICY, load(1, in_flight=20), since_scale_up_s=LONG_AGO, since_scale_down_s=LONG_AGO
    )
    assert d.delta == 2  # ceil(20 / 8) = 3 instances
    d = decide(
        POLICY, load(1, in_flight=500), since_scale_up_s=LONG_AGO, since_scale_down_s=LONG_AGO
    )
    assert d.delta == 3  # capped at max_instances = 4


def test_queue_wait_alone_adds_one_instance() -> None:
    d = decide(
        POLICY,
        load(2, in_flight=4, wait=5000),
        since_scale_up_s=LONG_AGO,
        since_scale_down_s=LONG_AGO,
    )
    assert d.delta == 1 and "queue wait" in d.reason


def test_cooldown_and_starting_instances_hold_scale_up() -> None:
    busy = load(1, in_flight=30)
    assert decide(POLICY, busy, since_scale_up_s=10, since_scale_down_s=LONG_AGO).delta == 0
    starting = load(1, starting=1, in_flight=30)
    assert (
        decide(POLICY, starting, since_scale_up_s=LONG_AGO, since_scale_down_s=LONG_AGO).delta == 0
    )


def test_idle_scales_down_one_at_a_time_never_below_minimum() -> None:
    d = decide(POLICY, load(3, in_flight=2), since_scale_up_s=LONG_AGO, since_scale_down_s=LONG_AGO)
    assert d.delta == -1
    assert (
        decide(POLICY, load(1), since_scale_up_s=LONG_AGO, since_scale_down_s=LONG_AGO).delta == 0
    )
    held = decide(POLICY, load(3, in_flight=2), since_scale_up_s=LONG_AGO, since_scale_down_s=5)
    assert held.delta == 0 and "cooldown" in held.reason


def test_no_scale_down_while_requests_queue() -> None:
    d = decide(
        POLICY,
        load(3, in_flight=1, queue=1),
        since_scale_up_s=LONG_AGO,
        since_scale_down_s=LONG_AGO,
    )
    assert d.delta == 0


def test_policy_reads_deployment_config_and_ignores_unknown_keys() -> None:
    p = AutoscalingPolicy.from_deployment(2, 5, {"target_in_flight_per_instance": 4, "junk": 1})
    assert (p.min_instances, p.max_instances, p.target_in_flight_per_instance) == (2, 5, 4.0)
