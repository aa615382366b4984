"""Offline autoscaling benchmark: replay a trace against every policy, write the figures.

    python -m bench.autoscale.run --trace PATH --out FILE.json [--slo-ttft-s 2] [--boot-s 180]
        [--compress N] [--plot FILE.png]

The instance's capacity at the SLO is measured first (one instance, Poisson arrivals with the
trace's request sizes): it sets the peers' per-replica targets, the oracle's sizing and our
saturation level, so no policy is tuned on the trace itself.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench.autoscale.model import InstanceModel, Request
from bench.autoscale.policies import (
    Dstack,
    Inventiv,
    KubeAI,
    Oracle,
    RayServe,
    SkyServe,
    Static,
    _Wish,
)
from bench.autoscale.replay import Outcome, Policy, Replay, ReplaySettings, load_trace, poisson_like
from core.autoscaling import AutoscalingConfig

CALIBRATION_S = 900.0


@dataclass(frozen=True)
class Capacity:
    rps: float  # 90 % of the arrival rate one instance serves with 99 % of TTFTs within the SLO
    active: float  # requests running + queued on it at that rate (Little's law, measured)
    work: float  # engine-seconds per second it serves at that rate (InstanceModel.work_s)
    token_share: float  # its share of the engine's token throughputs at that rate (see below)


def token_throughputs(model: InstanceModel) -> tuple[float, float]:
    """Prompt tokens per second one GPU prefills and output tokens per second it generates at
    a full batch (the gateway's in-flight cap): what an operator reads off the engine's own
    benchmarks, here off the instance model."""
    batch = model.max_inflight_per_gpu
    return 1 / model.prefill_per_token_s, batch / model.decode_step_s(batch)


def calibrate(requests: list[Request], settings: ReplaySettings, model: InstanceModel) -> Capacity:
    prefill_tps, decode_tps = token_throughputs(model)

    def attainment(rate: float) -> tuple[float, float, float, float]:
        load = poisson_like(requests, rate, CALIBRATION_S, seed=1)
        replay = Replay(load, Static(), settings, model, initial_instances=1)
        out = replay.run()
        served = [f for f in replay.flights if not f.refused]
        busy = sum(f.done - f.req.arrival for f in served)
        work = sum(model.work_s(r) for r in load)
        share = sum(f.req.prompt / prefill_tps + f.req.output / decode_tps for f in served)
        return out.slo_attainment, busy / CALIBRATION_S, work / CALIBRATION_S, share / CALIBRATION_S

    low, high = 0.1, 200.0
    for _ in range(12):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if attainment(mid)[0] >= 0.99 else (low, mid)
    # The attainment falls off a cliff past that rate: 10 % below it is the usable capacity.
    _, active, work, share = attainment(0.9 * low)
    return Capacity(round(0.9 * low, 2), round(active, 1), round(work, 3), round(share, 3))


@dataclass
class WorkSizing:
    """Instances for the work arriving in the next minute at the calibrated capacity: the
    instances every policy starts with (`at_start`), and static provisioning's peak."""

    requests: list[Request]
    model: InstanceModel
    capacity: float  # engine-seconds per second one instance gives within the SLO
    min_instances: int
    max_instances: int
    lookahead_s: float = 60

    def __post_init__(self) -> None:
        self._times = [r.arrival for r in self.requests]
        self._work = list(
            itertools.accumulate((self.model.work_s(r) for r in self.requests), initial=0.0)
        )

    def needed_at(self, now: float) -> int:
        start = bisect.bisect_left(self._times, now)
        end = bisect.bisect_left(self._times, now + self.lookahead_s)
        work = self._work[end] - self._work[start]
        target = math.ceil(work / self.lookahead_s / self.capacity)
        return min(max(target, self.min_instances), self.max_instances)

    def at_start(self, boot_s: float, step_s: float) -> int:
        """The busiest minute starting within the first boot: no policy's order can land
        sooner, so until then the starting fleet alone serves (a trace slice begins mid-service;
        sized on its first minute, every policy missed the SLO for as long as one boot)."""
        return max(self.needed_at(t) for t in _range(0.0, boot_s, step_s))


def our_modes(
    capacity: Capacity, settings: ReplaySettings, model: InstanceModel
) -> dict[str, AutoscalingConfig]:
    # A quarter of headroom below the SLO's cliff covers the boot time's growth.
    saturation = max(1.0, 0.75 * capacity.active)
    spec = AutoscalingConfig(scale_up_active_per_gpu=saturation, boot_s=settings.boot_s)
    capacity_down = spec.model_copy(update={"scale_down_active_per_gpu": saturation / 2})
    # Target tracking: the fleet sized to the calibrated capacity, which is already 10 % below
    # the SLO's cliff (so all of it is used); the saturation level at the requests running at
    # that capacity and the SLO as safety triggers. Delays, steps: the config's defaults.
    target = AutoscalingConfig(
        scale_up_active_per_gpu=max(1.0, capacity.active),
        slo_ttft_s=settings.slo_ttft_s,
        boot_s=settings.boot_s,
        target_rps_per_gpu=capacity.rps,
        target_utilization=1.0,
    )
    # The same in tokens: the engine's prefill and decode throughputs, sized at the share of
    # them the calibrated capacity uses (the rest is batching and prefill overheads).
    prefill_tps, decode_tps = token_throughputs(model)
    tokens = target.model_copy(
        update={
            "target_rps_per_gpu": None,
            "target_prompt_tokens_per_gpu": round(prefill_tps),
            "target_output_tokens_per_gpu": round(decode_tps),
            "target_utilization": capacity.token_share,
        }
    )
    return {
        "spec": spec,
        "capacity-down": capacity_down,
        "predictive": capacity_down.model_copy(update={"predictive": True}),
        "slo": capacity_down.model_copy(update={"slo_ttft_s": settings.slo_ttft_s}),
        "warm-spare": capacity_down.model_copy(update={"warm_spares": 1}),
        "target": target,
        "target-predictive": target.model_copy(update={"predictive": True}),
        "target-tokens": tokens,
        "target-tokens-predictive": tokens.model_copy(update={"predictive": True}),
    }


def policies(
    requests: list[Request], capacity: Capacity, settings: ReplaySettings, model: InstanceModel
) -> dict[str, Callable[[], tuple[Policy, int]]]:
    """name -> factory of (policy, instances ready at the start)."""
    lo, hi = settings.min_instances, settings.max_instances
    sizing = WorkSizing(requests, model, capacity.work, lo, hi)
    start = sizing.at_start(settings.boot_s, settings.interval_s)
    last = requests[-1].arrival if requests else 0.0
    peak = max(sizing.needed_at(t) for t in _range(0.0, last, settings.interval_s))
    made: dict[str, Callable[[], tuple[Policy, int]]] = {}
    for mode, config in our_modes(capacity, settings, model).items():
        made[f"inventiv-{mode}"] = functools.partial(_ours, config, lo, hi, start)
    made["static-peak"] = lambda: (Static(), peak)
    made["skyserve-qps"] = lambda: (SkyServe(capacity.rps, _Wish(300, 1200, lo, hi)), start)
    made["kubeai-inflight"] = lambda: (KubeAI(_Wish(0, 30, lo, hi)), start)
    made["rayserve-ongoing"] = lambda: (RayServe(_Wish(30, 600, lo, hi)), start)
    made["dstack-rps"] = lambda: (Dstack(capacity.rps, lo, hi), start)
    oracle_round = min(5.0, settings.interval_s)
    made["oracle"] = lambda: (
        Oracle(requests, model, settings.slo_ttft_s, lo, hi, oracle_round),
        start,
    )
    return made


def _ours(config: AutoscalingConfig, lo: int, hi: int, start: int) -> tuple[Policy, int]:
    return Inventiv(config, lo, hi), start


def _range(start: float, stop: float, step: float) -> list[float]:
    return [start + k * step for k in range(int((stop - start) // step) + 1)]


def best_mode(outcomes: dict[str, Outcome], target: float = 0.95) -> str:
    """Our mode with the fewest GPU-hours among those reaching the target (else the best SLO)."""
    ours = {k: v for k, v in outcomes.items() if k.startswith("inventiv-")}
    meeting = [k for k, v in ours.items() if v.slo_attainment >= target]
    if meeting:
        return min(meeting, key=lambda k: ours[k].gpu_hours)
    return max(ours, key=lambda k: ours[k].slo_attainment)


def evaluate_trace(
    requests: list[Request], settings: ReplaySettings, model: InstanceModel | None = None
) -> tuple[dict[str, Outcome], Capacity, str]:
    model = model or InstanceModel()
    capacity = calibrate(requests, settings, model)
    outcomes: dict[str, Outcome] = {}
    for name, make in policies(requests, capacity, settings, model).items():
        policy, initial = make()
        outcomes[name] = Replay(requests, policy, settings, model, initial).run()
    best = best_mode(outcomes)
    outcomes["inventiv"] = outcomes[best]
    return outcomes, capacity, best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale.run", description=__doc__)
    parser.add_argument(
        "--trace", required=True, help="CSV: TIMESTAMP,ContextTokens,GeneratedTokens"
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--slo-ttft-s", type=float, default=2.0)
    parser.add_argument("--boot-s", type=float, default=180.0)
    parser.add_argument("--compress", type=float, default=1.0, help="divide arrival times by N")
    parser.add_argument(
        "--load-scale", type=int, default=1, help="overlay the trace N times (N x the load)"
    )
    parser.add_argument("--interval-s", type=float, default=15.0, help="autoscaler period")
    parser.add_argument("--min-instances", type=int, default=1)
    parser.add_argument("--max-instances", type=int, default=20)
    parser.add_argument("--plot", help="PNG of load, instances and TTFT (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.compress <= 0 or args.load_scale < 1 or args.boot_s < 0 or args.slo_ttft_s <= 0:
        parser.error(
            "--compress, --load-scale, --slo-ttft-s must be positive, --boot-s not negative"
        )
    settings = ReplaySettings(
        slo_ttft_s=args.slo_ttft_s,
        boot_s=args.boot_s,
        interval_s=args.interval_s,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
    )
    started = time.monotonic()
    requests = load_trace(args.trace, args.compress, args.load_scale)
    model = InstanceModel()
    outcomes, capacity, best = evaluate_trace(requests, settings, model)
    report = {
        "trace": args.trace,
        "settings": {
            **asdict(settings),
            "compress": args.compress,
            "load_scale": args.load_scale,
            "requests": len(requests),
            "instance_model": "Llama-3.1-8B-Instruct BF16 on 1x H100 80GB, agent/sim timing",
            "capacity_rps_per_instance": capacity.rps,
            "active_per_instance_at_capacity": capacity.active,
            "inventiv_mode": best,
            "run_s": round(time.monotonic() - started, 1),
        },
        "policies": {name: o.figures() for name, o in outcomes.items()},
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(table(report))
    if args.plot:
        from bench.autoscale.plot import plot

        baseline = best_baseline(outcomes)
        plot(
            args.plot,
            {
                f"inventiv ({best})": outcomes[best],
                baseline: outcomes[baseline],
                "oracle": outcomes["oracle"],
            },
            settings,
        )


def best_baseline(outcomes: dict[str, Outcome]) -> str:
    """The peer with the best SLO attainment, fewest GPU-hours on ties."""
    peers = [
        k for k in outcomes if k not in ("oracle", "inventiv") and not k.startswith("inventiv-")
    ]
    return max(peers, key=lambda k: (round(outcomes[k].slo_attainment, 3), -outcomes[k].gpu_hours))


def table(report: dict) -> str:  # type: ignore[type-arg]
    rows = [
        "| policy | GPU-hours | within SLO | TTFT p50 s | TTFT p99 s | queue wait p99 s | refused | scale actions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in report["policies"].items():
        rows.append(
            f"| {name} | {p['gpu_hours']:.2f} | {p['slo_attainment']:.1%} | {p['ttft_p50_s']:.2f} "
            f"| {p['ttft_p99_s']:.2f} | {p['queue_wait_p99_s']:.2f} | {p['refused']} "
            f"| {p['scale_actions']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
