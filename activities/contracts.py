"""Inputs and outputs of the activities: one dataclass argument per activity.

Everything here crosses Temporal's data converter, so it is plain data: str, numbers, bools, lists
and StrEnums (stored in histories as their string values, so the JSON is the same as with bare
strings). The workflows import these; the activities never import the workflows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from activities.providers.base import InstanceOffer
from core.autoscaling import PolicyState
from core.models import InstanceState, TerminationReason
from core.progress import Step

# ---------------------------------------------------------------- instance lifecycle


@dataclass
class InstanceRef:
    instance_id: str


@dataclass
class LifecycleSpec:
    """What an instance workflow needs to know, read from the database and the worker's settings."""

    instance_id: str
    deployment_id: str
    provider: str
    state: InstanceState
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
    # How long a deleted machine may take to disappear before the delete is issued again.
    delete_confirm_timeout_s: float = 240.0
    # Longest wait between two attempts of a failing cleanup step (they never give up).
    cleanup_max_interval_s: float = 60.0


@dataclass
class CreateResult:
    resource_id: str


@dataclass
class BootStepInput:
    """One boot step on a machine that exists at the provider."""

    instance_id: str
    resource_id: str
    step: Step
    timeout_s: float
    poll_interval_s: float


@dataclass
class StepResult:
    ok: bool
    detail: str = ""


@dataclass
class FailInput:
    instance_id: str
    reason: TerminationReason
    error: str


@dataclass
class RoutingInput:
    instance_id: str
    routable: bool


@dataclass
class HealthInput:
    instance_id: str


@dataclass
class HealthResult:
    healthy: bool
    detail: str
    gone: bool = False  # the instance was marked provider_deleted meanwhile


@dataclass
class ReplacementInput:
    replaced_instance_id: str
    new_instance_id: str


@dataclass
class DrainInput:
    instance_id: str
    reason: TerminationReason
    timeout_s: float
    poll_interval_s: float


@dataclass
class TerminateInput:
    instance_id: str
    reason: TerminationReason
    error: str | None = None


@dataclass
class VolumeRef:
    instance_id: str
    volume_id: str


@dataclass
class AttentionInput:
    """A cleanup step failed in a way its retries cannot fix alone (or it keeps failing)."""

    instance_id: str
    step: str
    error: str
    attempts: int


@dataclass
class VolumePlan:
    delete: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reconciler


@dataclass
class ReconcileInput:
    interval_s: float
    orphan_grace_s: float
    rounds_before_continue: int = 100
    # A machine missing from its provider's listing for less than this may just not be listed
    # yet (eventual consistency): its instance is marked provider_deleted only after.
    missing_grace_s: float = 120.0
    # Resource id -> when (epoch seconds) it was first seen missing; carried between rounds.
    missing_since: dict[str, float] = field(default_factory=dict)


@dataclass
class ReconcileResult:
    provider_deleted: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    orphan_volumes_deleted: list[str] = field(default_factory=list)
    missing_since: dict[str, float] = field(default_factory=dict)
    # Instances in provisioning whose workflow was not running, started again.
    workflows_resumed: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- autoscaler


@dataclass
class AssessInput:
    deployment_id: str
    decision_id: str  # chosen by the workflow: a retried round finds its decision, takes no other
    now: float
    state: PolicyState


@dataclass
class ScalingPlan:
    enabled: bool  # False: the deployment is gone or autoscaling was stopped: the workflow ends
    delta: int
    reason: str
    drain_instance_ids: list[str] = field(default_factory=list)
    state: PolicyState = field(default_factory=PolicyState)  # for the next round


@dataclass
class ScaleUpInput:
    deployment_id: str
    decision_id: str
    new_instance_ids: list[str]
    reason: str


@dataclass
class ScaleDownInput:
    deployment_id: str
    decision_id: str
    instance_ids: list[str]
    reason: str


# ---------------------------------------------------------------- catalogues


@dataclass
class CatalogueInput:
    """Read a provider kind's catalogue (the API's sync asks the worker, which has the SDKs)."""

    kind: str


@dataclass
class CatalogueResult:
    # Each offer's `price_source` says where its price comes from: "provider-api" or "static".
    offers: list[InstanceOffer] = field(default_factory=list)
