"""SQLModel tables and their API families (Base -> Create/Update -> table -> Public)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from core.wire import RoutingStrategy


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any) -> Any:
    return Field(default_factory=lambda: default.copy(), sa_column=Column(JSONB, nullable=False))


class Role(StrEnum):
    admin = "admin"
    member = "member"


class InstanceState(StrEnum):
    provisioning = "provisioning"
    booting = "booting"
    ready = "ready"
    draining = "draining"
    terminating = "terminating"
    terminated = "terminated"
    archived = "archived"
    startup_failed = "startup_failed"
    provider_deleted = "provider_deleted"


class TerminationReason(StrEnum):
    user_request = "user_request"
    scale_down = "scale_down"
    boot_timeout = "boot_timeout"
    startup_error = "startup_error"
    unhealthy = "unhealthy"
    provider_deleted = "provider_deleted"
    orphan = "orphan"
    error = "error"


class ActionStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


# ---------------------------------------------------------------- users and projects


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(index=True, unique=True, max_length=255)
    full_name: str | None = Field(default=None, max_length=255)
    hashed_password: str
    role: Role = Field(default=Role.member)
    is_active: bool = True
    # Carried in every session token; bumped by a password change, reset or disabling, which
    # ends every session issued before.
    token_version: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Project(SQLModel, table=True):
    __tablename__ = "projects"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=120)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ProjectQuota(SQLModel, table=True):
    """An admin's limits for one project; a project without a row (or a null field) is unlimited.

    Checked in the transaction that creates an instance, with the project row locked
    (core/quotas.py), so concurrent creations cannot both pass the last free slot.
    """

    __tablename__ = "project_quotas"
    project_id: uuid.UUID = Field(foreign_key="projects.id", primary_key=True, ondelete="CASCADE")
    allowed_provider_ids: list[str] | None = Field(default=None, sa_column=Column(JSONB))
    allowed_instance_type_ids: list[str] | None = Field(default=None, sa_column=Column(JSONB))
    max_instances: int | None = None
    max_gpus: int | None = None
    monthly_budget: float | None = None  # in budget_currency
    budget_currency: str = Field(default="EUR", max_length=3)
    monthly_gpu_hours: float | None = None
    budget_warning_percent: int = 80
    max_key_rpm: int | None = None
    max_key_tpm: int | None = None
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ProjectMember(SQLModel, table=True):
    __tablename__ = "project_members"
    project_id: uuid.UUID = Field(foreign_key="projects.id", primary_key=True, ondelete="CASCADE")
    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True, ondelete="CASCADE")


class ApiKey(SQLModel, table=True):
    """An inference key. Only the SHA-256 of the secret is stored; `prefix` lets people recognise it."""

    __tablename__ = "api_keys"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    project_id: uuid.UUID = Field(foreign_key="projects.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=120)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(index=True, unique=True, max_length=64)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    created_by: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# ---------------------------------------------------------------- providers and catalogue


class Provider(SQLModel, table=True):
    """A provider account. Credentials never live here: they come from settings/environment."""

    __tablename__ = "providers"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    kind: str = Field(max_length=32)  # a registered kind: activities/providers/registry.py
    enabled: bool = True
    # What a volume at this provider costs, billed from its creation until its deletion.
    volume_price_per_gb_month: float = 0
    volume_currency: str = Field(default="EUR", max_length=3)
    config: dict[str, Any] = _json({})
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class InstanceType(SQLModel, table=True):
    __tablename__ = "instance_types"
    __table_args__ = (UniqueConstraint("provider_id", "name"),)
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    provider_id: uuid.UUID = Field(foreign_key="providers.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=64)
    gpu_model: str | None = Field(default=None, max_length=64)
    gpu_count: int = 0
    gpu_memory_gb: float = 0
    vcpus: int = 0
    ram_gb: float = 0
    price_per_hour: float = 0
    currency: str = Field(default="EUR", max_length=3)
    zones: list[str] = _json([])
    # Where price_per_hour comes from: manual (an admin), static (the adapter's built-in table),
    # provider-api (the provider's own catalogue).
    price_source: str = Field(default="manual", max_length=16)


# ---------------------------------------------------------------- deployments and instances


class Deployment(SQLModel, table=True):
    __tablename__ = "deployments"
    # A live deployment's served name is unique within its project (migration 0007): the
    # gateway resolves names per project, and the database, not a prior read, refuses a clash.
    __table_args__ = (
        Index(
            "uq_deployments_project_served_name_live",
            "project_id",
            "served_name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    project_id: uuid.UUID = Field(foreign_key="projects.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=120)
    model: str = Field(max_length=255)
    served_name: str = Field(index=True, max_length=255)
    flavor: str = Field(default="cpu-sim", max_length=64)
    provider_id: uuid.UUID = Field(foreign_key="providers.id", index=True)
    instance_type_id: uuid.UUID = Field(foreign_key="instance_types.id")
    min_instances: int = 0
    max_instances: int = 1
    autoscaling_enabled: bool = False
    autoscaling: dict[str, Any] = _json({})
    engine_args: dict[str, Any] = _json({})
    boot_timeout_s: float | None = None
    routing: RoutingStrategy = RoutingStrategy.sticky_header  # how the gateway picks an instance
    # Set by an admin: the deployment may use code-loading and network engine flags.
    trusted: bool = False
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    # Set when retired: kept on record for history and costs; its served name becomes free.
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class Instance(SQLModel, table=True):
    __tablename__ = "instances"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    deployment_id: uuid.UUID = Field(foreign_key="deployments.id", index=True)
    project_id: uuid.UUID = Field(foreign_key="projects.id", index=True)
    provider_id: uuid.UUID = Field(foreign_key="providers.id", index=True)
    instance_type_id: uuid.UUID = Field(foreign_key="instance_types.id")
    state: InstanceState = Field(default=InstanceState.provisioning, index=True)
    workflow_id: str = Field(max_length=80)
    provider_resource_id: str | None = Field(default=None, max_length=255)
    zone: str | None = Field(default=None, max_length=64)
    ip_address: str | None = Field(default=None, max_length=64)
    agent_url: str | None = Field(default=None, max_length=255)
    engine_url: str | None = Field(default=None, max_length=255)
    agent_token_hash: str | None = Field(default=None, max_length=64)
    agent_version: str | None = Field(default=None, max_length=32)
    agent_checksum: str | None = Field(default=None, max_length=64)
    agent_integrity_ok: bool | None = None
    termination_reason: TerminationReason | None = None
    error: str | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    ready_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    terminated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_heartbeat_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # Set while a cleanup step keeps failing (an `InstanceAttention` as JSON); cleared when the
    # step succeeds.
    attention: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))


class InstanceAttention(SQLModel):
    """Why an instance needs an operator: a cleanup step that keeps failing. The step goes on
    retrying; once the cause is fixed it succeeds and this is cleared."""

    step: str
    error: str
    attempts: int
    since: datetime
    leaked: list[str]  # provider ids of the machine and volumes still there
    hint: str


class InstanceStateHistory(SQLModel, table=True):
    __tablename__ = "instance_state_history"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    instance_id: uuid.UUID = Field(foreign_key="instances.id", index=True, ondelete="CASCADE")
    from_state: InstanceState | None = None
    to_state: InstanceState
    reason: str | None = None
    at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class InstanceAction(SQLModel, table=True):
    """One step of an instance's life (the action log): start, end, outcome, error text."""

    __tablename__ = "instance_actions"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    instance_id: uuid.UUID = Field(foreign_key="instances.id", index=True, ondelete="CASCADE")
    step: str = Field(max_length=64)
    status: ActionStatus = Field(default=ActionStatus.running)
    detail: str | None = None
    error: str | None = None
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class InstanceVolume(SQLModel, table=True):
    __tablename__ = "instance_volumes"
    __table_args__ = (UniqueConstraint("instance_id", "provider_volume_id"),)
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    instance_id: uuid.UUID = Field(foreign_key="instances.id", index=True, ondelete="CASCADE")
    provider_volume_id: str = Field(max_length=255)
    volume_type: str = Field(max_length=64)
    size_gb: float = 0
    is_boot: bool = False
    delete_on_terminate: bool = True
    state: str = Field(default="attached", max_length=16)  # attached | deleted | kept
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# ---------------------------------------------------------------- time series


class RequestLog(SQLModel, table=True):
    __tablename__ = "request_logs"
    __table_args__ = (
        Index("ix_request_logs_project_at", "project_id", "at"),
        Index("ix_request_logs_deployment_at", "deployment_id", "at"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    api_key_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    model: str = Field(max_length=255)
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0
    status_code: int = 200
    streamed: bool = False


class InstanceMetric(SQLModel, table=True):
    __tablename__ = "instance_metrics"
    __table_args__ = (Index("ix_instance_metrics_instance_at", "instance_id", "at"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    instance_id: uuid.UUID = Field(foreign_key="instances.id", ondelete="CASCADE")
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    gpu_utilization: float | None = None
    gpu_memory_used_mb: float | None = None
    gpu_memory_total_mb: float | None = None
    gpu_temperature_c: float | None = None
    gpu_power_w: float | None = None
    cpu_percent: float | None = None
    ram_percent: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    data: dict[str, Any] = _json({})


# ---------------------------------------------------------------- autoscaling


class ScalingAction(StrEnum):
    """What a decision asks for (`scaling_decisions.action`)."""

    none = "none"
    scale_up = "scale_up"
    scale_down = "scale_down"
    invalid_config = "invalid_config"  # the stored policy does not validate: nothing is done


class ScalingDecision(SQLModel, table=True):
    """One round of a deployment's autoscaler: what it saw, what it decided and why, and what
    happened when it acted. The id is chosen by the AutoscalerWorkflow, so a round retried after
    a worker crash finds its decision instead of taking a second one."""

    __tablename__ = "scaling_decisions"
    __table_args__ = (Index("ix_scaling_decisions_deployment_at", "deployment_id", "at"),)
    id: uuid.UUID = Field(primary_key=True)
    deployment_id: uuid.UUID = Field(foreign_key="deployments.id", ondelete="CASCADE")
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    delta: int  # > 0 servers ordered, < 0 instances to drain, 0 nothing
    action: str = Field(max_length=32)  # ScalingAction
    reason: str
    instances: int  # booting + ready when it decided
    inputs: dict[str, Any] = _json({})  # the signals (core.autoscaling.Signals) it read
    state: dict[str, Any] = _json({})  # the PolicyState carried into the next round
    drain: list[str] = _json([])  # instance ids chosen to drain
    # What acting on it did: instances created and started, drained, refused, held back.
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))

    def public(self) -> dict[str, Any]:
        """As the API and the live event stream show it."""
        return {
            "decision_id": str(self.id),
            "at": self.at.timestamp(),
            "delta": self.delta,
            "change": f"{self.delta:+d}",
            "action": self.action,
            "reason": self.reason,
            "instances": self.instances,
            "inputs": self.inputs,
            "drain": self.drain,
            "result": self.result,
        }


# ---------------------------------------------------------------- bare metal


class BareMetalHost(SQLModel, table=True):
    """A machine reachable over SSH that the `ssh` provider lends to one instance at a time.

    `private_key_ref` names the SSH key, never holds it in clear: `file:<path on the control
    plane>` or `fernet:<key encrypted with INVENTIV_SSH_KEY_ENCRYPTION_KEY>`. `host_key` is the
    host's public key (known_hosts pinning). `claimed_by` is the instance using the host (unique:
    a conditional UPDATE claims it, so two instances never share a host).
    """

    __tablename__ = "bare_metal_hosts"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=120)
    address: str = Field(max_length=255)
    port: int = 22
    user: str = Field(max_length=64)
    private_key_ref: str
    host_key: str | None = None
    instance_type: str = Field(default="bare-metal", index=True, max_length=64)
    gpu_inventory: list[dict[str, Any]] = _json([])
    python: str = Field(default="python3", max_length=255)
    agent_port: int = 8090
    engine_port: int = 8000
    project_id: uuid.UUID | None = Field(
        default=None, foreign_key="projects.id", index=True, ondelete="SET NULL"
    )
    enabled: bool = True
    claimed_by: uuid.UUID | None = Field(default=None, unique=True, index=True)
    claimed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


def _at(nullable: bool = True) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class MachineEnrolment(SQLModel, table=True):
    """A one-time token that lets one machine join (`python -m agent join`). Only its SHA-256 is
    stored; `used_at` is set by the conditional UPDATE that spends it, so it works once."""

    __tablename__ = "machine_enrolments"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    name: str = Field(max_length=120)
    project_id: uuid.UUID | None = Field(
        default=None, foreign_key="projects.id", index=True, ondelete="CASCADE"
    )
    created_by: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = _at()
    machine_id: uuid.UUID | None = None  # the machine it enrolled
    created_at: datetime = _at(nullable=False)


class Machine(SQLModel, table=True):
    """A machine that joined through the outbound tunnel; the `tunnel` provider lends it to one
    instance at a time (`claimed_by`, unique, claimed by a conditional UPDATE like bare-metal hosts).

    The machine proves itself with its credential (only the SHA-256 is stored; rotated over the
    tunnel before `credential_expires_at`) and a signature by the Ed25519 key it generated
    (`public_key`, raw bytes in hex). `revoked_at` cuts the tunnel. `relay_url` is where the
    tunnel replica holding its connection relays HTTP to it (`<relay_url>/engine`, `/agent`).
    `owner_id` decides its sharing: time slots in `timezone` and quotas (core/machine_sharing.py).
    """

    __tablename__ = "machines"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=120)
    project_id: uuid.UUID | None = Field(
        default=None, foreign_key="projects.id", index=True, ondelete="CASCADE"
    )
    owner_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    public_key: str = Field(max_length=64)
    credential_hash: str = Field(index=True, unique=True, max_length=64)
    credential_expires_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    revoked_at: datetime | None = _at()
    instance_type: str = Field(default="tunnel", index=True, max_length=64)
    gpu_count: int = 0
    gpu_inventory: list[dict[str, Any]] = _json([])
    timezone: str = Field(default="UTC", max_length=64)
    # [{"days": [0..6] (Monday 0), "start": "20:00", "end": "08:00"}]; empty: always shared
    slots: list[dict[str, Any]] = _json([])
    quota_gpus: int | None = None  # GPUs the cluster may use at once; None: all
    quota_gpu_hours_per_day: float | None = None  # per local day; None: unlimited
    claimed_by: uuid.UUID | None = Field(default=None, unique=True, index=True)
    claimed_at: datetime | None = _at()
    # what the claiming instance's agent runs: its environment without secrets
    desired_env: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    relay_url: str | None = Field(default=None, max_length=255)
    remote_address: str | None = Field(default=None, max_length=255)
    connected_at: datetime | None = _at()
    disconnected_at: datetime | None = _at()
    last_seen_at: datetime | None = _at()
    running_instance: str | None = Field(default=None, max_length=64)  # as the agent reports
    created_at: datetime = _at(nullable=False)


class MachineUsage(SQLModel, table=True):
    """GPU-seconds a machine served the cluster, per day in the machine's own time zone."""

    __tablename__ = "machine_usage"
    machine_id: uuid.UUID = Field(foreign_key="machines.id", primary_key=True, ondelete="CASCADE")
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD, local to the machine
    gpu_seconds: float = 0.0
