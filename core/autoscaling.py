"""Autoscaling policy: a pure function from windowed load signals to a decision (no I/O, no clock).

The specification's triggers, configurable per deployment (`deployments.autoscaling`):
- scale up when the average queue wait over the window exceeds `scale_up_queue_wait_s`, or when
  Total_Active_Requests / Total_GPU_Count exceeds `scale_up_active_per_gpu` (instances still
  booting count as coming capacity): order `scale_up_step` servers, more if the saturation level
  asks for more;
- scale down when the GPU utilisation of the ready instances stays below
  `scale_down_gpu_utilization` for `scale_down_delay_s`: drain one instance (the least loaded;
  ties: the newest), never below the minimum.
Each delay is measured from when its condition began (`PolicyState`), not from the last action.
A condition ends only when it has been false for a whole window, so one jittery sample does not
restart its clock. No drain on the first round; never below min nor above max.

Optional modes beyond the specification (each off by default, evaluated in bench/autoscale):
`scale_down_active_per_gpu` (drain when the others could carry the load), `predictive`
(scale up for the arrival rate projected one boot ahead), `slo_ttft_s` (scale up when the
window's TTFT p95 exceeds the target), `warm_spares` (instances kept beyond the need) and
target tracking: the fleet sized to the demand, desired = ceil(demand / (per-GPU capacity x
`target_utilization`)), the demand measured in requests (`target_rps_per_gpu`: arrival rate
over requests one GPU serves) or in tokens (`target_prompt_tokens_per_gpu` and
`target_output_tokens_per_gpu`: the share of a GPU the finished requests' prompt and output
tokens per second take, scaled by arrivals over completions; LLM requests differ tenfold in
cost, so counting them alone sizes for the average one), ordered once the need has exceeded
the fleet for `scale_up_delay_s` (booting instances count), drained towards the most wanted
over the last `target_down_delay_s` (default: the boot time), at most `scale_down_step` a
round; the queue-wait, saturation and SLO triggers stay as safety nets (one `scale_up_step`
beyond the target, and only while nothing boots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AutoscalingConfig(BaseModel):
    """A deployment's autoscaling policy; min and max instances are the deployment's own."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(
        default=60, ge=5, le=3600, description="window the signals are averaged over"
    )
    scale_up_queue_wait_s: float = Field(
        default=5, gt=0, le=3600, description="average queue wait above which to scale up"
    )
    scale_up_active_per_gpu: float = Field(
        default=48,
        gt=0,
        le=100_000,
        description="active requests (running + queued) per GPU above which to scale up",
    )
    scale_up_delay_s: float = Field(
        default=30, ge=0, le=3600, description="how long a scale-up condition lasts before acting"
    )
    scale_up_step: int = Field(default=1, ge=1, le=100, description="servers ordered at a time")
    scale_down_gpu_utilization: float = Field(
        default=0.2, ge=0, le=1, description="GPU utilisation (0..1) below which to scale down"
    )
    scale_down_delay_s: float = Field(
        default=600,
        ge=0,
        le=86_400,
        description="how long the scale-down condition lasts before draining one instance",
    )
    scale_down_active_per_gpu: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="optional: also scale down when the other instances would carry fewer "
        "active requests per GPU than this",
    )
    predictive: bool = Field(
        default=False,
        description="optional: scale up for the arrival rate projected `boot_s` ahead",
    )
    boot_s: float = Field(
        default=180,
        ge=0,
        le=86_400,
        description="expected boot time (predictive mode; target tracking's default down delay)",
    )
    slo_ttft_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="optional: scale up when the window's time-to-first-token p95 exceeds this",
    )
    warm_spares: int = Field(
        default=0, ge=0, le=100, description="optional: instances kept beyond the need"
    )
    target_rps_per_gpu: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="optional target tracking: requests per second one GPU serves within the "
        "SLO (its calibrated capacity); the fleet is sized to the arrival rate at "
        "`target_utilization` of it",
    )
    target_prompt_tokens_per_gpu: float | None = Field(
        default=None,
        gt=0,
        le=100_000_000,
        description="optional token-based target tracking (with `target_output_tokens_per_gpu`):"
        " prompt tokens per second one GPU prefills; the demand is the share of GPUs the "
        "finished requests' tokens take",
    )
    target_output_tokens_per_gpu: float | None = Field(
        default=None,
        gt=0,
        le=100_000_000,
        description="token-based target tracking: output tokens per second one GPU generates "
        "at a full batch",
    )
    target_utilization: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="target tracking: share (0..1] of the per-GPU capacity to size the fleet for",
    )
    target_down_delay_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="target tracking: how long the fleet must have been above the need before "
        "draining towards it (the most wanted over this time is kept); default `boot_s`: an "
        "instance drained and ordered again costs a boot, as much as holding it that long",
    )
    scale_down_step: int = Field(
        default=1, ge=1, le=100, description="target tracking: instances drained at a time"
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        down = self.scale_down_active_per_gpu
        if down is not None and down >= self.scale_up_active_per_gpu:
            raise ValueError(
                f"scale_down_active_per_gpu ({down}) must be below scale_up_active_per_gpu "
                f"({self.scale_up_active_per_gpu}), or the policy would flap"
            )
        tokens = (self.target_prompt_tokens_per_gpu, self.target_output_tokens_per_gpu)
        if (tokens[0] is None) != (tokens[1] is None):
            raise ValueError(
                "target_prompt_tokens_per_gpu and target_output_tokens_per_gpu go together: "
                "token-based target tracking needs both"
            )
        if tokens[0] is not None and self.target_rps_per_gpu is not None:
            raise ValueError(
                "target_rps_per_gpu and the token targets are two measures of the same demand: "
                "set one of them"
            )
        return self

    @property
    def target_tracking(self) -> bool:
        return self.target_rps_per_gpu is not None or self.target_prompt_tokens_per_gpu is not None

    @property
    def down_delay_s(self) -> float:
        """Target tracking's down delay, the boot time unless set."""
        return self.boot_s if self.target_down_delay_s is None else self.target_down_delay_s


@dataclass(frozen=True)
class InstanceLoad:
    """One instance of the deployment, booting or ready."""

    id: str
    ready: bool  # False: provisioning or booting, i.e. capacity on its way
    created_at: float
    gpu_count: int
    active_requests: float  # running on it now (streams included, finished or not)
    gpu_utilization: float | None  # busy share over the window, 0..1; None: not reported yet


@dataclass(frozen=True)
class Signals:
    """The deployment's load over the last window (`AutoscalingConfig.window_s`)."""

    instances: tuple[InstanceLoad, ...]
    queue_wait_avg_s: float  # mean wait of the requests that left the gateways' queues
    active_requests: float  # running + queued, averaged over the window
    queued_requests: float  # waiting in the gateways' queues now
    arrival_rate_rps: float  # requests per second that came in over the window
    completion_rate_rps: float = 0.0  # requests per second that finished over the window
    prompt_tokens_rps: float = 0.0  # prompt tokens per second of the requests that finished
    output_tokens_rps: float = 0.0  # output tokens per second of the requests that finished
    ttft_p95_s: float | None = None  # time to first token, p95 over the window (SLO mode)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between rounds; small, serializable (continue-as-new)."""

    rounds: int = 0
    up_since: float | None = None  # when the scale-up condition began
    up_seen: float | None = None  # when it last held
    down_since: float | None = None
    down_seen: float | None = None
    # Arrival-rate trend (predictive mode): the rate at the start of the current trend window.
    trend_rate: float | None = None
    trend_at: float | None = None
    trend_slope: float = 0.0  # requests/s per second
    # Target tracking: (time, instances wanted) over the last down delay, only the
    # entries that can still be the window's maximum (times rising, counts falling).
    target_history: tuple[tuple[float, int], ...] = ()
    target_since: float | None = None  # when target tracking began to record
    target_up_since: float | None = None  # when the need began to exceed the fleet
    target_up_seen: float | None = None  # when it last did

    def __post_init__(self) -> None:
        # From JSON (a stored decision, continue-as-new) the history comes back as lists.
        history = tuple((float(t), int(n)) for t, n in self.target_history)
        object.__setattr__(self, "target_history", history)


@dataclass(frozen=True)
class Decision:
    delta: int  # > 0: order this many servers; < 0: drain `drain`; 0: nothing
    reason: str
    drain: tuple[str, ...] = ()


def within_capacity(decision: Decision, available: int | None) -> Decision:
    """The decision limited to the machines the provider has free now (None: a cloud, no known
    limit). Ordering more would only fail at create; the reason says what held it back."""
    if available is None or decision.delta <= available:
        return decision
    if available <= 0:
        return Decision(0, f"{decision.reason}; no machine available now")
    return Decision(available, f"{decision.reason}; only {available} machine(s) available now")


def _track(since: float | None, seen: float | None, holds: bool, now: float, grace: float):  # type: ignore[no-untyped-def]
    """(since, seen) of a condition: it ends only once it has been false for `grace`."""
    if holds:
        return (now if since is None else since), now
    if seen is not None and now - seen < grace:
        return since, seen
    return None, None


def drain_order(instances: list[InstanceLoad]) -> list[InstanceLoad]:
    """Who to drain first: the least loaded; ties: the newest."""
    return sorted(instances, key=lambda i: (i.active_requests, -i.created_at))


def evaluate(
    config: AutoscalingConfig,
    min_instances: int,
    max_instances: int,
    signals: Signals,
    state: PolicyState,
    now: float,
) -> tuple[Decision, PolicyState]:
    """One round: the decision and the state to carry into the next round."""
    first_round = state.rounds == 0
    state = _trend(config, signals, replace(state, rounds=state.rounds + 1), now)
    instances = list(signals.instances)
    ready = [i for i in instances if i.ready]
    total = len(instances)
    booting = total - len(ready)
    gpus_per_instance = max(1, max((i.gpu_count for i in instances), default=1))
    gpus = sum(max(1, i.gpu_count) for i in instances)  # booting ones included: coming capacity
    running = sum(i.active_requests for i in instances)
    # The queue built up while capacity was on its way is that capacity's to absorb: while
    # instances boot, only the running requests count against the saturation level.
    active = signals.active_requests if not booting else running
    growth = _growth(config, signals, state)
    # Servers the saturation level asks for: running requests, not a backlog that drains once
    # capacity comes (sizing on it would order servers that are idle by the time they boot).
    needed = math.ceil(running * growth / (config.scale_up_active_per_gpu * gpus_per_instance))
    ready_gpus = sum(max(1, i.gpu_count) for i in ready)
    saturated = ready_gpus > 0 and running / ready_gpus > config.scale_up_active_per_gpu
    if saturated and signals.completion_rate_rps > 0:
        # Arrivals against what the ready instances complete: the shortfall under overload,
        # where running requests are capped by the gateway and no longer show the demand.
        supply = signals.completion_rate_rps / len(ready)
        needed = max(needed, math.ceil(signals.arrival_rate_rps * growth / supply - 0.05))
    floor = min_instances
    desired: int | None = None
    if config.target_tracking:
        # The demand sets the size. The safety triggers add a step beyond it, and only while
        # nothing boots: running requests swollen by a backlog being absorbed are not demand.
        needed = 0
        wanted_now = _desired(config, signals, gpus_per_instance, growth)
        desired = min(max(wanted_now + config.warm_spares, floor), max_instances)
        # While instances boot, the fleet they complete is what is wanted: the down delay of
        # an instance counts from when it could serve, not from its order (or it would go as
        # soon as it is ready whenever the boot is as long as the delay).
        state = _record_target(config, state, max(desired, total) if booting else desired, now)
    elif config.warm_spares:
        floor = min(max(floor, needed + config.warm_spares), max_instances)

    if total < min_instances:
        return Decision(min_instances - total, f"below minimum ({total} < {min_instances})"), state
    if total > max_instances:
        if first_round:
            return Decision(0, f"above maximum ({total} > {max_instances}), first round"), state
        excess = drain_order(ready)[: total - max_instances]
        return Decision(
            -len(excess),
            f"above maximum ({total} > {max_instances})",
            tuple(i.id for i in excess),
        ), state

    if total == 0:
        if signals.queued_requests > 0 or signals.active_requests > 0:
            wanted = min(max_instances, max(config.scale_up_step, needed, desired or 0))
            return Decision(wanted, "requests waiting and no instance"), state
        return Decision(0, "no instance, no request"), state

    up_reasons = _up_reasons(config, signals, active, gpus, booting, total, needed)
    if total < floor:
        up_reasons.append(f"{config.warm_spares} warm spare(s) wanted beyond {needed} needed")
    up_since, up_seen = _track(
        state.up_since, state.up_seen, bool(up_reasons), now, config.window_s
    )
    state = replace(state, up_since=up_since, up_seen=up_seen)
    # Target tracking orders what the load asks for (booting instances counted) once the need
    # has exceeded the fleet for the up delay: a window's noise above a step costs a boot.
    target_reason = target_wait = None
    if desired is not None:
        short = desired > total
        since, seen = _track(
            state.target_up_since, state.target_up_seen, short, now, config.window_s
        )
        state = replace(state, target_up_since=since, target_up_seen=seen)
        short_for = now - (since if since is not None else now)
        if short and short_for >= config.scale_up_delay_s:
            target_reason = _target_reason(config, signals, desired)
        elif short:
            target_wait = (
                f"{_target_reason(config, signals, desired)} for {short_for:.0f} s "
                f"(delay {config.scale_up_delay_s:.0f} s)"
            )
    if up_reasons and total < max_instances:
        held = now - (up_since if up_since is not None else now)
        if held >= config.scale_up_delay_s or total < floor:
            wanted = min(max_instances, max(total + config.scale_up_step, needed, floor))
            wanted = max(wanted, desired or 0)
            reasons = [*up_reasons, *([target_reason] if target_reason else [])]
            return Decision(wanted - total, "; ".join(reasons)), state
        if target_reason is None:
            reason = (
                f"{'; '.join(up_reasons)} for {held:.0f} s (delay {config.scale_up_delay_s:.0f} s)"
            )
            return Decision(0, reason), state
    if desired is not None and target_reason is not None:
        return Decision(desired - total, target_reason), state
    if up_reasons:
        return Decision(0, f"{'; '.join(up_reasons)}, at maximum ({max_instances})"), state
    if target_wait is not None:
        return Decision(0, target_wait), state
    if desired is not None:
        return _target_down(config, signals, state, ready, total, first_round, now)

    down_reason, count = _down_reason(config, signals, ready, total, floor)
    down_since, down_seen = _track(
        state.down_since, state.down_seen, down_reason is not None, now, config.window_s
    )
    state = replace(state, down_since=down_since, down_seen=down_seen)
    if down_reason is None or down_since is None:
        return Decision(0, "steady"), state
    held = now - down_since
    if first_round or held < config.scale_down_delay_s:
        return Decision(
            0, f"{down_reason} for {held:.0f} s (delay {config.scale_down_delay_s:.0f} s)"
        ), state
    victims = drain_order(ready)[:count]
    # The condition was about the fleet before this drain: it must hold anew for the next one.
    state = replace(state, down_since=None, down_seen=None)
    return Decision(
        -len(victims), f"{down_reason} for {held:.0f} s", tuple(i.id for i in victims)
    ), state


def _up_reasons(
    config: AutoscalingConfig,
    signals: Signals,
    active: float,
    gpus: int,
    booting: int,
    total: int,
    needed: int,
) -> list[str]:
    reasons: list[str] = []
    # Queue wait and TTFT lag behind capacity: instances on their way are the answer to them.
    if signals.queue_wait_avg_s > config.scale_up_queue_wait_s and not booting:
        reasons.append(f"average queue wait {signals.queue_wait_avg_s:.1f} s")
    if config.slo_ttft_s is not None and signals.ttft_p95_s is not None and not booting:
        if signals.ttft_p95_s > config.slo_ttft_s:
            reasons.append(f"TTFT p95 {signals.ttft_p95_s:.2f} s above the SLO")
    if active / gpus > config.scale_up_active_per_gpu and (not booting or needed > total):
        reasons.append(f"{active / gpus:.1f} active requests per GPU")
    elif config.predictive and needed > total:
        reasons.append(f"arrivals rising: {needed} instances needed in {config.boot_s:.0f} s")
    return reasons


def _down_reason(
    config: AutoscalingConfig,
    signals: Signals,
    ready: list[InstanceLoad],
    total: int,
    floor: int,
) -> tuple[str | None, int]:
    """Why to scale down, if so, and how many instances may go."""
    if len(ready) < total or total <= floor or signals.queued_requests > 0:
        return None, 0
    utilizations = [i.gpu_utilization for i in ready]
    if utilizations and None not in utilizations:
        mean = sum(u for u in utilizations if u is not None) / len(utilizations)
        if mean < config.scale_down_gpu_utilization:
            return f"GPU utilisation {mean:.0%}", 1
    level = config.scale_down_active_per_gpu
    if level is not None:
        # Requests still streaming count as much as new ones: long streams never look idle.
        load = max(signals.active_requests, sum(i.active_requests for i in ready))
        gpus_per_instance = max(1, max(i.gpu_count for i in ready))
        keep = max(floor, math.floor(load / (level * gpus_per_instance)) + 1)
        if keep < total:
            per_gpu = load / (keep * gpus_per_instance)
            return f"{per_gpu:.1f} active requests per GPU on {keep} instance(s)", total - keep
    return None, 0


def _trend(
    config: AutoscalingConfig, signals: Signals, state: PolicyState, now: float
) -> PolicyState:
    """The arrival rate's slope, measured once per window (finer would mostly measure noise)."""
    if not config.predictive:
        return state
    rate = signals.arrival_rate_rps
    if state.trend_at is None or state.trend_rate is None:
        return replace(state, trend_rate=rate, trend_at=now)
    if now - state.trend_at < config.window_s:
        return state
    rise = rate - state.trend_rate
    if config.target_tracking:
        # Only a rise beyond the arrivals' own noise (two standard deviations of the difference
        # of two Poisson counts over the window): target tracking keeps the most it wanted for
        # `target_down_delay_s`, so a noisy slope would be paid for that long.
        span = now - state.trend_at
        noise = 2 * math.sqrt(max(rate + state.trend_rate, 0.0) * config.window_s) / config.window_s
        rise = max(0.0, rise - noise) if span > 0 else 0.0
    slope = rise / (now - state.trend_at)
    return replace(state, trend_rate=rate, trend_at=now, trend_slope=slope)


def _growth(config: AutoscalingConfig, signals: Signals, state: PolicyState) -> float:
    """Factor by which the load is expected to grow within a boot (1 without predictive mode)."""
    if not config.predictive or signals.arrival_rate_rps <= 0 or state.trend_slope <= 0:
        return 1.0
    projected = signals.arrival_rate_rps + state.trend_slope * config.boot_s
    return min(projected / signals.arrival_rate_rps, 4.0)


def _gpus_demanded(config: AutoscalingConfig, signals: Signals) -> float:
    """GPUs the demand takes at full use. Requests: the arrival rate, queued and refused ones
    included, which unlike the requests running does not swell while a backlog drains into new
    capacity. Tokens: the prompt and output tokens per second of the requests that finished,
    each over what one GPU processes of them, scaled to the arrival rate (an overloaded fleet
    finishes only what it can: its finished tokens measure its supply, not the demand)."""
    if config.target_rps_per_gpu is not None:
        return signals.arrival_rate_rps / config.target_rps_per_gpu
    assert config.target_prompt_tokens_per_gpu and config.target_output_tokens_per_gpu
    finished = (
        signals.prompt_tokens_rps / config.target_prompt_tokens_per_gpu
        + signals.output_tokens_rps / config.target_output_tokens_per_gpu
    )
    if signals.completion_rate_rps <= 0:
        return finished
    return finished * signals.arrival_rate_rps / signals.completion_rate_rps


def _desired(
    config: AutoscalingConfig, signals: Signals, gpus_per_instance: int, growth: float
) -> int:
    """Instances the demand asks for at `target_utilization` of the per-GPU capacity."""
    per_instance = config.target_utilization * gpus_per_instance
    return math.ceil(_gpus_demanded(config, signals) * growth / per_instance - 1e-9)


def _target_reason(config: AutoscalingConfig, signals: Signals, desired: int) -> str:
    if config.target_rps_per_gpu is not None:
        demand = f"{signals.arrival_rate_rps:.1f} req/s"
    else:
        demand = (
            f"{signals.prompt_tokens_rps:.0f} prompt + {signals.output_tokens_rps:.0f} output "
            "tokens/s"
        )
    return (
        f"target tracking: {desired} instance(s) for {demand} at "
        f"{config.target_utilization:.0%} of capacity"
    )


def _record_target(
    config: AutoscalingConfig, state: PolicyState, desired: int, now: float
) -> PolicyState:
    """The round's wish added to the sliding window of the last down delay, kept as
    the entries that can still be its maximum (a later, larger wish hides an earlier one)."""
    horizon = now - config.down_delay_s
    history = [(t, n) for t, n in state.target_history if t >= horizon and n > desired]
    history.append((now, desired))
    since = now if state.target_since is None else state.target_since
    return replace(state, target_history=tuple(history), target_since=since)


def _target_down(
    config: AutoscalingConfig,
    signals: Signals,
    state: PolicyState,
    ready: list[InstanceLoad],
    total: int,
    first_round: bool,
    now: float,
) -> tuple[Decision, PolicyState]:
    """Drain towards the most instances wanted over the last down delay: an instance
    goes only once the fleet has not needed it for that long (from when that began)."""
    keep = max(n for _, n in state.target_history)
    if keep >= total:
        return Decision(0, f"target tracking: {total} instance(s) wanted"), state
    since = state.target_since if state.target_since is not None else now
    recorded = now - since
    if first_round or recorded < config.down_delay_s:
        return Decision(
            0,
            f"target tracking: {keep} instance(s) wanted, {recorded:.0f} s recorded "
            f"(delay {config.down_delay_s:.0f} s)",
        ), state
    if len(ready) < total or signals.queued_requests > 0:
        return Decision(
            0, f"target tracking: {keep} wanted, but instances boot or requests queue"
        ), state
    victims = drain_order(ready)[: min(config.scale_down_step, total - keep)]
    return Decision(
        -len(victims),
        f"target tracking: at most {keep} instance(s) wanted over the last "
        f"{config.down_delay_s:.0f} s",
        tuple(i.id for i in victims),
    ), state
