"""The autoscaling policy, a pure function: every branch an operator relies on."""

from __future__ import annotations

import dataclasses
import json

import pydantic
import pytest

from core.autoscaling import (
    AutoscalingConfig,
    InstanceLoad,
    PolicyState,
    Signals,
    evaluate,
)

# --- The specification's policy: `evaluate` ----------------------------------------------------

SPEC = AutoscalingConfig(
    window_s=60,
    scale_up_queue_wait_s=5,
    scale_up_active_per_gpu=10,
    scale_up_delay_s=30,
    scale_down_gpu_utilization=0.2,
    scale_down_delay_s=600,
)


def inst(  # type: ignore[no-untyped-def]
    name: str, active: float = 0, util: float | None = 0.5, ready: bool = True, at: float = 0
):
    return InstanceLoad(name, ready, at, 1, active, util)


def sig(*instances: InstanceLoad, wait: float = 0, active: float | None = None, **kw):  # type: ignore[no-untyped-def]
    total = sum(i.active_requests for i in instances) if active is None else active
    return Signals(instances, wait, total, kw.pop("queued", 0), kw.pop("rate", 1.0), **kw)


def run(config, lo, hi, rounds):  # type: ignore[no-untyped-def]
    """Feed (time, signals) rounds through the policy; the decisions in order."""
    state = PolicyState()
    out = []
    for now, signals in rounds:
        decision, state = evaluate(config, lo, hi, signals, state, now)
        out.append(decision)
    return out


def test_average_queue_wait_over_threshold_scales_up_after_the_delay() -> None:
    busy = sig(inst("a", 5), wait=6)
    held, acted = run(SPEC, 1, 4, [(0, busy), (30, busy)])
    assert held.delta == 0 and "queue wait" in held.reason
    assert acted.delta == 1 and "average queue wait 6.0 s" in acted.reason


def test_active_requests_per_gpu_over_saturation_scales_up_sized_to_the_load() -> None:
    two_gpus = InstanceLoad("a", True, 0, 2, 50, 0.9)  # 50 running on 2 GPUs: 25 per GPU
    d = run(SPEC, 1, 8, [(0, sig(two_gpus)), (30, sig(two_gpus))])[-1]
    assert d.delta == 2 and "25.0 active requests per GPU" in d.reason  # ceil(50 / 20) = 3
    below = InstanceLoad("a", True, 0, 2, 18, 0.9)  # 9 per GPU: under the level of 10
    assert run(SPEC, 1, 8, [(0, sig(below)), (30, sig(below))])[-1].delta == 0


def test_delay_counts_from_when_the_condition_began_not_from_the_last_action() -> None:
    calm, busy = sig(inst("a", 5)), sig(inst("a", 15))
    # Long calm (no action for an hour), then a rise: it still waits its 30 s delay ...
    decisions = run(SPEC, 1, 4, [(0, calm), (3600, busy), (3615, busy), (3630, busy)])
    assert [d.delta for d in decisions] == [0, 0, 0, 1]


def test_one_jittery_sample_does_not_restart_the_delay() -> None:
    busy, dip = sig(inst("a", 15)), sig(inst("a", 9))
    decisions = run(SPEC, 1, 4, [(0, busy), (15, dip), (30, busy)])
    assert decisions[-1].delta == 1  # the dip at 15 s did not reset the clock started at 0
    # ... but a whole window without the condition does.
    decisions = run(SPEC, 1, 4, [(0, busy), (15, dip), (80, dip), (90, busy), (105, busy)])
    assert [d.delta for d in decisions] == [0, 0, 0, 0, 0]


def test_booting_instances_count_as_coming_capacity() -> None:
    # 15 running on one ready + one booting instance: 7.5 per GPU, nothing more to order.
    s = sig(inst("a", 15), inst("b", 0, None, ready=False, at=10), wait=20, queued=30)
    decisions = run(SPEC, 1, 4, [(0, s), (60, s), (120, s)])
    assert [d.delta for d in decisions] == [0, 0, 0]


def test_never_above_max_even_when_saturated() -> None:
    s = sig(inst("a", 100), inst("b", 100), wait=30)
    decisions = run(SPEC, 1, 2, [(0, s), (60, s)])
    assert [d.delta for d in decisions] == [0, 0] and "at maximum" in decisions[-1].reason
    sized = run(SPEC, 1, 3, [(0, s), (60, s)])[-1]
    assert sized.delta == 1  # wanted ceil(200 / 10) = 20, capped at 3


def test_above_max_drains_the_excess_but_not_on_the_first_round() -> None:
    s = sig(inst("a", 3), inst("b", 1), inst("c", 2))
    first, second = run(SPEC, 1, 2, [(0, s), (15, s)])
    assert first.delta == 0 and "first round" in first.reason
    assert second.delta == -1 and second.drain == ("b",)


def test_below_min_orders_the_missing_servers_at_once() -> None:
    d = run(SPEC, 3, 5, [(0, sig(inst("a")))])[0]
    assert d.delta == 2 and "below minimum" in d.reason


def test_low_gpu_utilisation_drains_after_n_minutes_never_below_min_nor_on_the_first_round() -> (
    None
):
    idle = sig(inst("a", 1, 0.05, at=1), inst("b", 0, 0.05, at=2), inst("c", 0, 0.1, at=3))
    no_delay = SPEC.model_copy(update={"scale_down_delay_s": 0})
    assert run(no_delay, 1, 4, [(0, idle)])[0].delta == 0  # no drain on the first round
    rounds = [(t, idle) for t in range(0, 601, 15)]
    decisions = run(SPEC, 1, 4, rounds)
    assert all(d.delta == 0 for d in decisions[:-1])
    # The least loaded goes; "b" and "c" tie at 0 running: the newest, "c".
    assert decisions[-1].delta == -1 and decisions[-1].drain == ("c",)
    assert "GPU utilisation 7%" in decisions[-1].reason
    one = sig(inst("a", 0, 0.0))
    assert all(d.delta == 0 for d in run(SPEC, 1, 4, [(t, one) for t in range(0, 1201, 15)]))


def test_long_streams_keep_instances_busy_so_they_are_not_drained() -> None:
    # Few requests finish, but the streams running keep the GPUs busy (busy share ~100 %).
    streaming = sig(inst("a", 4, 0.98), inst("b", 3, 0.97), rate=0.01)
    capacity = SPEC.model_copy(update={"scale_down_active_per_gpu": 2.0})
    decisions = run(capacity, 1, 4, [(t, streaming) for t in range(0, 1801, 15)])
    assert all(d.delta == 0 for d in decisions)


def test_capacity_mode_drains_what_the_rest_can_carry() -> None:
    capacity = SPEC.model_copy(update={"scale_down_active_per_gpu": 5.0})
    fleet = sig(*(inst(f"i{k}", 2, 0.9, at=k) for k in range(6)))  # 12 running on 6, busy
    decisions = run(capacity, 1, 8, [(t, fleet) for t in range(0, 601, 15)])
    assert decisions[-1].delta == -3  # 12 requests keep under 5 per GPU on 3 instances
    assert "on 3 instance(s)" in decisions[-1].reason


def test_no_drain_while_requests_queue_or_instances_boot() -> None:
    queued = sig(inst("a", 0, 0.0), inst("b", 0, 0.0), queued=1)
    booting = sig(inst("a", 0, 0.0), inst("b", 0, 0.0), inst("c", 0, None, ready=False))
    for s in (queued, booting):
        assert all(d.delta == 0 for d in run(SPEC, 1, 4, [(t, s) for t in range(0, 1201, 15)]))


def test_scale_from_zero_on_the_first_waiting_request() -> None:
    d = run(SPEC, 0, 3, [(0, sig(queued=1, active=1))])[0]
    assert d.delta == 1 and "no instance" in d.reason
    assert run(SPEC, 0, 3, [(0, sig())])[0].delta == 0


def test_predictive_mode_orders_ahead_of_a_rising_arrival_rate() -> None:
    predictive = SPEC.model_copy(update={"predictive": True, "boot_s": 180})
    # 8 running on one GPU (under the level of 10), arrivals doubling every minute.
    rounds = [(t, sig(inst("a", 8), rate=1.0 * 2 ** (t / 60))) for t in range(0, 121, 15)]
    assert all(d.delta == 0 for d in run(SPEC, 1, 4, rounds))
    ahead = run(predictive, 1, 4, rounds)
    assert any(d.delta > 0 and "arrivals rising" in d.reason for d in ahead)


def test_slo_mode_scales_up_on_ttft() -> None:
    slo = SPEC.model_copy(update={"slo_ttft_s": 2.0})
    s = sig(inst("a", 5), ttft_p95_s=3.5)
    assert run(SPEC, 1, 4, [(0, s), (30, s)])[-1].delta == 0
    assert run(slo, 1, 4, [(0, s), (30, s)])[-1].delta == 1


def test_warm_spare_is_kept_beyond_the_need() -> None:
    spare = SPEC.model_copy(update={"warm_spares": 1})
    d = run(spare, 1, 4, [(0, sig(inst("a", 5)))])[0]
    assert d.delta == 1 and "warm spare" in d.reason


def test_state_is_a_small_serializable_dataclass() -> None:
    _, state = evaluate(SPEC, 1, 4, sig(inst("a", 15)), PolicyState(), 100.0)
    data = json.loads(json.dumps(dataclasses.asdict(state)))
    assert PolicyState(**data) == state and state.up_since == 100.0


# --- Target tracking: the fleet sized to the arrival rate -----------------------------------

# 10 requests/s per GPU at 80 %: 8 requests/s per instance.
# Orders at once (no up delay) unless a test says otherwise: sizing alone is tested here.
TARGET = SPEC.model_copy(
    update={
        "target_rps_per_gpu": 10.0,
        "target_utilization": 0.8,
        "target_down_delay_s": 300,
        "scale_up_delay_s": 0,
    }
)


def fleet(n: int, booting: int = 0, active: float = 3, util: float = 0.5):  # type: ignore[no-untyped-def]
    ready = [inst(f"r{k}", active, util, at=k) for k in range(n)]
    return ready + [inst(f"b{k}", 0, None, ready=False, at=100 + k) for k in range(booting)]


def follow(config, lo, hi, n, rounds):  # type: ignore[no-untyped-def]
    """(time, rate) rounds on a fleet of `n` that follows the decisions (orders ready at once);
    (time, delta, fleet after) per round."""
    state, out = PolicyState(), []
    for now, rate in rounds:
        d, state = evaluate(config, lo, hi, sig(*fleet(n), rate=rate), state, now)
        n += d.delta
        out.append((now, d.delta, n))
    return out


def test_target_orders_what_the_arrival_rate_asks_for_at_once() -> None:
    # 30 requests/s at 8 per instance: ceil(3.75) = 4 instances, ordered in the first round.
    d = run(TARGET, 1, 10, [(0, sig(*fleet(1), rate=30.0))])[0]
    assert d.delta == 3 and "target tracking: 4 instance(s) for 30.0 req/s at 80%" in d.reason
    # Exactly at the target: no more.
    assert run(TARGET, 1, 10, [(0, sig(*fleet(4), rate=32.0))])[0].delta == 0


def test_target_counts_booting_instances_as_coming_capacity() -> None:
    s = sig(*fleet(2, booting=2), rate=30.0, wait=20, queued=50)  # 4 wanted, 4 there
    assert [d.delta for d in run(TARGET, 1, 10, [(t, s) for t in range(0, 301, 15)])] == [0] * 21
    more = sig(*fleet(2, booting=2), rate=45.0)  # 6 wanted: the 2 beyond the booting ones
    assert run(TARGET, 1, 10, [(0, more)])[0].delta == 2


def test_target_never_orders_above_max_nor_keeps_below_min() -> None:
    d = run(TARGET, 1, 5, [(0, sig(*fleet(2), rate=400.0))])[0]
    assert d.delta == 3  # wanted 50, capped at 5
    at_max = run(TARGET, 1, 5, [(0, sig(*fleet(5), rate=400.0))])[0]
    assert at_max.delta == 0
    # Idle for 20 minutes: down to the minimum of 2, not to 0 or 1.
    assert follow(TARGET, 2, 8, 4, [(t, 0.0) for t in range(0, 1201, 15)])[-1][2] == 2


def test_target_drains_only_after_the_down_delay_from_when_the_need_fell() -> None:
    busy = [(t, sig(*fleet(6), rate=45.0)) for t in range(0, 601, 15)]  # 6 wanted
    calm = [(t, sig(*fleet(6), rate=15.0)) for t in range(615, 1201, 15)]  # 2 wanted from 615
    decisions = run(TARGET, 1, 10, busy + calm)
    deltas = {now: d.delta for (now, _), d in zip(busy + calm, decisions, strict=True)}
    assert all(v == 0 for t, v in deltas.items() if t < 915)  # held 300 s from 615
    # Then one at a time (scale_down_step 1), the least loaded first (ties: the newest).
    assert deltas[915] == -1 and decisions[(915 - 0) // 15].drain == ("r5",)
    assert "at most 2 instance(s) wanted over the last 300 s" in decisions[915 // 15].reason


def test_target_keeps_the_most_wanted_over_the_delay_and_drains_a_few_at_a_time() -> None:
    step = TARGET.model_copy(update={"scale_down_step": 3})
    # 2 wanted (15 requests/s), but one round at 900 s asks for 5 (36 requests/s).
    out = follow(step, 1, 10, 8, [(t, 36.0 if t == 900 else 15.0) for t in range(0, 1501, 15)])
    changes = [(t, delta, left) for t, delta, left in out if delta]
    # 300 s recorded: 8 -> 5 -> 2, at most 3 a round; up to 5 at once at 900 s; back to 2 only
    # once the wish for 5 has left the last 300 s.
    assert changes == [(300, -3, 5), (315, -3, 2), (900, 3, 5), (1215, -3, 2)]


def test_target_keeps_the_safety_triggers_but_not_while_instances_boot() -> None:
    delayed = TARGET.model_copy(update={"scale_up_delay_s": 30})
    hot = sig(*fleet(2, active=4), rate=10.0, wait=8)  # 2 wanted, 2 there, queue wait 8 s
    decisions = run(delayed, 1, 10, [(0, hot), (30, hot)])
    assert decisions[0].delta == 0 and "queue wait" in decisions[0].reason
    assert decisions[1].delta == 1 and "average queue wait 8.0 s" in decisions[1].reason
    booting = sig(*fleet(2, booting=1, active=4), rate=10.0, wait=8)
    assert all(d.delta == 0 for d in run(delayed, 1, 10, [(0, booting), (30, booting)]))


def test_target_orders_once_the_need_has_exceeded_the_fleet_for_the_up_delay() -> None:
    delayed = TARGET.model_copy(update={"scale_up_delay_s": 30})
    # One round asking for 4 (30 requests/s) among rounds asking for 2: no order.
    blip = [(t, sig(*fleet(2), rate=30.0 if t == 60 else 12.0)) for t in range(0, 181, 15)]
    assert all(d.delta == 0 for d in run(delayed, 1, 10, blip))
    # Asking for 4 from 0 s on: ordered at 30 s, 30 s after the need began. With one round at
    # 15 s within the fleet (jitter), still at 30 s: the jitter does not restart the clock.
    rising = [(0, 30.0), (15, 30.0), (30, 30.0)]
    decisions = run(delayed, 1, 10, [(t, sig(*fleet(2), rate=r)) for t, r in rising])
    assert [d.delta for d in decisions] == [0, 0, 2]
    assert "for 15 s (delay 30 s)" in decisions[1].reason
    jitter = [(0, 30.0), (15, 12.0), (30, 30.0)]
    decisions = run(delayed, 1, 10, [(t, sig(*fleet(2), rate=r)) for t, r in jitter])
    assert [d.delta for d in decisions] == [0, 0, 2]


def test_target_from_zero_orders_the_target() -> None:
    d = run(TARGET, 0, 10, [(0, sig(queued=3, active=3, rate=20.0))])[0]
    assert d.delta == 3 and "no instance" in d.reason  # ceil(20 / 8)


def test_target_predictive_ignores_a_rise_within_the_arrivals_noise() -> None:
    predictive = TARGET.model_copy(update={"predictive": True, "boot_s": 180})
    # 40 -> 41 requests/s in a minute is within the noise (two sigma of the difference of two
    # 60 s Poisson counts: 2.3/s): 41 / 8 -> 6 instances, as there are. 40 -> 46 is a trend:
    # (6 - 2.3) / 60 s projected 180 s ahead, 57 requests/s: 8 instances.
    noisy = run(
        predictive, 1, 20, [(0, sig(*fleet(6), rate=40.0)), (60, sig(*fleet(6), rate=41.0))]
    )
    assert noisy[-1].delta == 0
    rising = run(
        predictive, 1, 20, [(0, sig(*fleet(6), rate=40.0)), (60, sig(*fleet(6), rate=46.0))]
    )
    assert rising[-1].delta > 0 and "target tracking" in rising[-1].reason


def test_target_state_survives_json() -> None:
    state = PolicyState()
    for t, rate in [(0, 40.0), (15, 20.0), (30, 10.0)]:
        _, state = evaluate(TARGET, 1, 10, sig(*fleet(5), rate=rate), state, t)
    assert state.target_history == ((0.0, 5), (15.0, 3), (30.0, 2))
    data = json.loads(json.dumps(dataclasses.asdict(state)))
    assert PolicyState(**data) == state


# --- Token-based target tracking: the demand in GPU time, not in requests ----------------------

# One GPU prefills 20,000 prompt tokens/s and generates 5,000 output tokens/s; sized at 80 %.
TOKENS = SPEC.model_copy(
    update={
        "target_prompt_tokens_per_gpu": 20_000.0,
        "target_output_tokens_per_gpu": 5_000.0,
        "target_utilization": 0.8,
        "target_down_delay_s": 300,
        "scale_up_delay_s": 0,
    }
)


def test_tokens_size_the_fleet_by_what_the_requests_cost_not_how_many_they_are() -> None:
    # The same 8 requests/s: short ones (500 prompt + 100 output tokens each) take
    # 4,000 / 20,000 + 800 / 5,000 = 0.36 GPU, one instance at 80 %; long ones (4,000 + 400)
    # take 1.6 + 0.64 = 2.24 GPUs, three instances. Counting requests sizes both the same.
    short = sig(*fleet(1), rate=8.0, prompt_tokens_rps=4_000.0, output_tokens_rps=800.0)
    long = sig(*fleet(1), rate=8.0, prompt_tokens_rps=32_000.0, output_tokens_rps=3_200.0)
    assert run(TOKENS, 1, 10, [(0, short)])[0].delta == 0
    d = run(TOKENS, 1, 10, [(0, long)])[0]
    assert d.delta == 2
    assert "3 instance(s) for 32000 prompt + 3200 output tokens/s at 80%" in d.reason
    by_requests = [run(TARGET, 1, 10, [(0, s)])[0].delta for s in (short, long)]
    assert by_requests == [0, 0]  # 8 requests/s at 8 per instance, whatever their size


def test_tokens_count_the_arrivals_an_overloaded_fleet_cannot_finish() -> None:
    # One instance finishes 8 requests/s (2,000 prompt + 250 output tokens each: 0.8 + 0.4 =
    # 1.2 GPUs of finished work) while 16 arrive: the demand is twice what it finishes, 2.4
    # GPUs, 3 instances at 80 %; with arrivals equal to completions, 2 (1.2 / 0.8 = 1.5).
    tokens = dict(prompt_tokens_rps=16_000.0, output_tokens_rps=2_000.0)
    overloaded = sig(*fleet(1), rate=16.0, completion_rate_rps=8.0, **tokens)
    steady = sig(*fleet(1), rate=8.0, completion_rate_rps=8.0, **tokens)
    d = run(TOKENS, 1, 10, [(0, overloaded)])[0]
    assert d.delta == 2 and "3 instance(s)" in d.reason
    assert run(TOKENS, 1, 10, [(0, steady)])[0].delta == 1


def test_tokens_drain_once_the_cost_has_fallen_for_the_delay() -> None:
    heavy = dict(prompt_tokens_rps=40_000.0, output_tokens_rps=4_000.0)  # 2.8 GPUs: 4 wanted
    light = dict(prompt_tokens_rps=8_000.0, output_tokens_rps=1_000.0)  # 0.6 GPU: 1 wanted
    busy = [(t, sig(*fleet(4), rate=8.0, **heavy)) for t in range(0, 301, 15)]
    calm = [(t, sig(*fleet(4), rate=8.0, **light)) for t in range(315, 901, 15)]
    decisions = run(TOKENS, 1, 10, busy + calm)
    deltas = {now: d.delta for (now, _), d in zip(busy + calm, decisions, strict=True)}
    assert all(v == 0 for t, v in deltas.items() if t < 615)  # 300 s from when it fell
    assert deltas[615] == -1


def test_target_down_delay_defaults_to_the_boot_time() -> None:
    # A drained instance ordered again costs a boot: holding it that long costs the same.
    config = TARGET.model_copy(update={"target_down_delay_s": None, "boot_s": 120})
    busy = [(t, sig(*fleet(3), rate=24.0)) for t in range(0, 301, 15)]  # 3 wanted
    calm = [(t, sig(*fleet(3), rate=4.0)) for t in range(315, 601, 15)]  # 1 wanted from 315
    decisions = run(config, 1, 10, busy + calm)
    first = next(now for (now, _), d in zip(busy + calm, decisions, strict=True) if d.delta)
    assert first == 435 and "over the last 120 s" in decisions[435 // 15].reason
    assert AutoscalingConfig().down_delay_s == 180 == AutoscalingConfig().boot_s


def test_an_instance_is_not_drained_before_it_has_served_for_the_down_delay() -> None:
    # Ordered at 0 for a brief rise, ready at 120 (the boot time as long as the delay): the need
    # fell at 15, but the delay counts from when the instance could serve.
    config = TARGET.model_copy(update={"target_down_delay_s": 120})
    rounds = [(0, sig(*fleet(1), rate=12.0))]  # 2 wanted: one ordered
    rounds += [(t, sig(*fleet(1, booting=1), rate=4.0)) for t in range(15, 120, 15)]
    rounds += [(t, sig(*fleet(2), rate=4.0)) for t in range(120, 301, 15)]
    deltas = [
        (now, d.delta) for (now, _), d in zip(rounds, run(config, 1, 10, rounds), strict=True)
    ]
    assert [(now, d) for now, d in deltas if d][:2] == [(0, 1), (240, -1)]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target_prompt_tokens_per_gpu": 20_000}, "go together"),
        ({"target_output_tokens_per_gpu": 5_000}, "go together"),
        (
            {
                "target_rps_per_gpu": 8,
                "target_prompt_tokens_per_gpu": 20_000,
                "target_output_tokens_per_gpu": 5_000,
            },
            "set one of them",
        ),
        ({"target_prompt_tokens_per_gpu": 0, "target_output_tokens_per_gpu": 5}, "greater than 0"),
    ],
)
def test_token_targets_are_validated(config: dict[str, float], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        AutoscalingConfig.model_validate(config)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target_rps_per_gpu", 0, "greater than 0"),
        ("target_utilization", 1.5, "less than or equal to 1"),
        ("target_down_delay_s", -1, "greater than or equal to 0"),
        ("scale_down_step", 0, "greater than or equal to 1"),
        ("scale_up_active_per_gpu", 0, "greater than 0"),
        ("scale_up_queue_wait_s", "soon", "valid number"),
        ("scale_down_gpu_utilization", 1.5, "less than or equal to 1"),
        ("scale_up_step", 0, "greater than or equal to 1"),
        ("target_in_flight_per_instance", 8, "Extra inputs are not permitted"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        AutoscalingConfig.model_validate({field: value})
    assert field in str(err.value) and message in str(err.value)


def test_config_refuses_a_down_level_at_or_above_the_up_level() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be below scale_up_active_per_gpu"):
        AutoscalingConfig(scale_up_active_per_gpu=10, scale_down_active_per_gpu=10)
