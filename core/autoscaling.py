"""Autoscaling policy: pure functions from a load snapshot to a decision (no I/O, no clock)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AutoscalingPolicy:
    """Per deployment (`deployments.autoscaling` JSON); every field has a sane default."""

    min_instances: int = 0
    max_instances: int = 1
    # Requests (running + queued at the gateway) one instance should carry at most.
    target_in_flight_per_instance: float = 8.0
    # Queue wait that triggers a scale-up even below the in-flight target.
    max_queue_wait_ms: float = 2000.0
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 300.0
    # Scale down only when the rest could carry the load at this fraction of their target.
    scale_down_utilization: float = 0.5

    @classmethod
    def from_deployment(
        cls, min_instances: int, max_instances: int, config: dict[str, Any]
    ) -> AutoscalingPolicy:
        known = {k: float(v) for k, v in config.items() if k in cls.__dataclass_fields__}
        known.pop("min_instances", None)
        known.pop("max_instances", None)
        return cls(min_instances=min_instances, max_instances=max_instances, **known)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoadSnapshot:
    ready: int  # instances serving
    starting: int  # provisioning or booting
    in_flight: float  # requests running at the gateways
    queue_length: float  # requests waiting in the gateways' queues
    queue_wait_p95_ms: float


@dataclass(frozen=True)
class Decision:
    delta: int  # > 0 start this many, < 0 drain this many, 0 nothing
    reason: str


def decide(
    policy: AutoscalingPolicy,
    load: LoadSnapshot,
    *,
    since_scale_up_s: float,
    since_scale_down_s: float,
) -> Decision:
    total = load.ready + load.starting
    if total < policy.min_instances:
        return Decision(
            policy.min_instances - total, f"below minimum ({total} < {policy.min_instances})"
        )
    if total > policy.max_instances:
        return Decision(
            policy.max_instances - total, f"above maximum ({total} > {policy.max_instances})"
        )

    demand = load.in_flight + load.queue_length
    wanted = math.ceil(demand / policy.target_in_flight_per_instance) if demand > 0 else 0
    if load.queue_wait_p95_ms > policy.max_queue_wait_ms:
        wanted = max(wanted, total + 1)
    wanted = min(max(wanted, policy.min_instances), policy.max_instances)

    if wanted > total:
        if load.starting > 0:
            return Decision(0, f"want {wanted}, waiting for {load.starting} starting instance(s)")
        if since_scale_up_s < policy.scale_up_cooldown_s:
            return Decision(0, f"want {wanted}, scale-up cooldown")
        why = (
            f"queue wait p95 {load.queue_wait_p95_ms:.0f} ms"
            if load.queue_wait_p95_ms > policy.max_queue_wait_ms
            else f"{demand:.0f} requests in flight for {total} instance(s)"
        )
        return Decision(wanted - total, why)

    if load.ready > wanted and load.queue_length == 0 and load.starting == 0:
        remaining = load.ready - 1
        capacity = remaining * policy.target_in_flight_per_instance * policy.scale_down_utilization
        if remaining >= policy.min_instances and demand <= capacity:
            if since_scale_down_s < policy.scale_down_cooldown_s:
                return Decision(0, "could scale down, scale-down cooldown")
            return Decision(-1, f"{demand:.0f} requests in flight fit on {remaining} instance(s)")
    return Decision(0, "steady")
