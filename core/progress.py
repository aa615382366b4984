"""Action steps of an instance's timeline, and its progress 0-100 % derived from them.

The boot steps count towards progress (docs/architecture.md, "Progress steps"); the others are
recorded in the same action log (drain, teardown, the reconciler's findings) but do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from core.models import ActionStatus, InstanceAction


class Step(StrEnum):
    request_created = "request_created"
    provider_create = "provider_create"
    provider_start = "provider_start"
    ip_assigned = "ip_assigned"
    agent_installed = "agent_installed"
    engine_http_up = "engine_http_up"
    model_loaded = "model_loaded"
    warmup = "warmup"
    health_check = "health_check"
    ready = "ready"
    # Serving
    unhealthy = "unhealthy"
    replacement = "replacement"
    # Drain and teardown
    drain = "drain"
    discover_volumes = "discover_volumes"
    delete_server = "delete_server"
    confirm_gone = "confirm_gone"
    delete_volume = "delete_volume"
    release_ips = "release_ips"
    # Found by the reconciler
    provider_deleted = "provider_deleted"
    orphan_deleted = "orphan_deleted"
    orphan_volume_deleted = "orphan_volume_deleted"
    workflow_resumed = "workflow_resumed"


STEP_PERCENT: dict[str, int] = {
    Step.request_created: 5,
    Step.provider_create: 20,
    Step.provider_start: 30,
    Step.ip_assigned: 40,
    Step.agent_installed: 50,
    Step.engine_http_up: 60,
    Step.model_loaded: 75,
    Step.warmup: 90,
    Step.health_check: 95,
    Step.ready: 100,
}


def progress_percent(actions: Iterable[InstanceAction]) -> int:
    """The highest step completed so far; actions outside the boot steps do not count."""
    done = [
        STEP_PERCENT[a.step]
        for a in actions
        if a.status == ActionStatus.succeeded and a.step in STEP_PERCENT
    ]
    return max(done, default=0)


def current_step(actions: Iterable[InstanceAction]) -> str | None:
    """The step running now, else the last one that finished."""
    ordered = sorted(actions, key=lambda a: (a.started_at, a.id or 0))
    running = [a for a in ordered if a.status == ActionStatus.running]
    if running:
        return running[-1].step
    return ordered[-1].step if ordered else None
