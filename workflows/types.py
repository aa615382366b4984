"""Dataclass inputs, outputs and states of the workflows and their activities.

Everything here crosses Temporal's data converter, so it is plain data (str, float, bool, lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InstanceRef:
    instance_id: str


@dataclass
class LifecycleSpec:
    """What an instance workflow needs to know, read from the database and the worker's settings."""

    instance_id: str
    deployment_id: str
    provider: str
    state: str
    resource_id: str | None
    boot_timeout_s: float
    health_interval_s: float
    heartbeat_fresh_s: float
    unhealthy_threshold: int
    drain_timeout_s: float
    archive_after_s: float
    poll_interval_s: float
    block_on_agent_mismatch: bool
    # Health rounds before the workflow continues as new (keeps its history short).
    health_rounds_per_run: int = 500


@dataclass
class StepInput:
    """One boot or termination step on a machine."""

    instance_id: str
    resource_id: str
    step: str = ""
    timeout_s: float = 60.0
    poll_interval_s: float = 1.0


@dataclass
class StepResult:
    ok: bool
    detail: str = ""


@dataclass
class CreateResult:
    resource_id: str


@dataclass
class FailInput:
    instance_id: str
    reason: str  # a TerminationReason value
    error: str


@dataclass
class RoutingInput:
    instance_id: str
    routable: bool


@dataclass
class HealthResult:
    healthy: bool
    detail: str
    gone: bool = False  # the instance was marked provider_deleted meanwhile


@dataclass
class DrainInput:
    instance_id: str
    reason: str
    timeout_s: float
    poll_interval_s: float


@dataclass
class TerminateInput:
    instance_id: str
    reason: str
    error: str | None = None


@dataclass
class VolumeRef:
    instance_id: str
    volume_id: str


@dataclass
class VolumePlan:
    delete: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)


@dataclass
class ReplacementInput:
    replaced_instance_id: str
    new_instance_id: str


@dataclass
class InstanceWorkflowState:
    """The workflow's whole state; continue-as-new carries it to the next run."""

    instance_id: str
    phase: str = "start"  # start | booting | ready | terminating | provider_deleted | done
    resource_id: str | None = None
    drain_requested: bool = False
    terminate_requested: bool = False
    termination_reason: str | None = None
    provider_deleted: bool = False
    failed_checks: int = 0
    replacement_id: str | None = None


@dataclass
class InstanceWorkflowInput:
    instance_id: str
    state: InstanceWorkflowState | None = None


@dataclass
class ReconcileInput:
    interval_s: float
    orphan_grace_s: float
    rounds_before_continue: int = 100


@dataclass
class ReconcileResult:
    provider_deleted: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    orphan_volumes_deleted: list[str] = field(default_factory=list)


@dataclass
class AutoscaleInput:
    deployment_id: str
    interval_s: float = 15.0
    last_scale_up: float = 0.0  # epoch seconds of the last scale-up (carried by continue-as-new)
    last_scale_down: float = 0.0
    rounds_before_continue: int = 200


@dataclass
class AssessInput:
    deployment_id: str
    now: float
    last_scale_up: float
    last_scale_down: float


@dataclass
class ScalingPlan:
    enabled: bool  # False: the deployment is gone or autoscaling was stopped: the workflow ends
    delta: int
    reason: str
    drain_instance_ids: list[str] = field(default_factory=list)


@dataclass
class ScaleUpInput:
    deployment_id: str
    new_instance_ids: list[str]
    reason: str


@dataclass
class ScaleDownInput:
    deployment_id: str
    instance_ids: list[str]
    reason: str
