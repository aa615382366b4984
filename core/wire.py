"""Wire types shared between services (pydantic). The agent imports only this module of core."""

from __future__ import annotations

import struct
from enum import StrEnum

from pydantic import BaseModel


class RoutingStrategy(StrEnum):
    """How the gateway chooses an instance of a deployment (`Deployment.routing`, carried to the
    gateway in `RoutableInstance`). Each member is served by one strategy class in
    gateway/routing/strategies.py (`build_strategies`)."""

    least_load = "least_load"  # fewest requests per GPU, engines' own reports included
    sticky_header = "sticky_header"  # a session named by a header keeps its instance (bounded load)
    sticky_user = "sticky_user"  # the same, the session named by the request's "user" field
    prefix_aware = "prefix_aware"  # where the prompt's prefix is probably cached (bounded load)


class RoutableInstance(BaseModel):
    """An instance the gateway may send new requests to (an entry of ROUTING_REGISTRY)."""

    instance_id: str
    deployment_id: str
    project_id: str
    model: str  # the served name clients ask for
    engine_url: str  # OpenAI-compatible base URL of the engine, e.g. http://10.0.0.5:8000
    agent_url: str | None = None
    gpu_count: int = 1
    routing: RoutingStrategy = RoutingStrategy.sticky_header


class RegistryChange(BaseModel):
    op: str  # "put" | "remove"
    instance_id: str
    instance: RoutableInstance | None = None


# ---------------------------------------------------------------- agent heartbeats


class GpuSample(BaseModel):
    """One GPU as NVML reads it; a field is None when the board does not report it."""

    index: int
    name: str | None = None
    utilization_pct: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class HostSample(BaseModel):
    cpu_percent: float | None = None
    ram_percent: float | None = None
    disk_percent: float | None = None  # of the volume holding the model cache


class EngineLoad(BaseModel):
    """The engine's own figures, from its Prometheus /metrics (vLLM names)."""

    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1
    in_flight: float | None = None  # running + waiting: drained when 0
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    ttft_seconds_sum: float | None = None
    ttft_seconds_count: float | None = None
    # The simulator's modelled GPU busy share since the previous heartbeat, percent; the API
    # takes it as the GPU utilisation of a machine whose agent sees no GPU. vLLM has none.
    busy_pct: float | None = None


class ModelDownload(BaseModel):
    """Progress of the model download, for the dashboard's "model loading" bar."""

    state: str = "idle"  # idle | downloading | verifying | done | failed
    source: str | None = None  # s3 | hub | cache
    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    error: str | None = None


class AgentInfo(BaseModel):
    version: str
    build_date: str
    checksum: str  # SHA-256 of agent/agent.py


class AgentHeartbeat(BaseModel):
    """POST /api/v1/agents/heartbeat body; authenticated with the instance's agent token."""

    instance_id: str
    agent_info: AgentInfo
    engine_state: str
    engine_ready: bool
    engine_restarts: int = 0
    engine_error: str | None = None
    gpus: list[GpuSample] | None = None  # None: no NVIDIA GPU readable (not "idle")
    gpu_error: str | None = None  # why GPUs are absent or missing (no driver, GPU lost)
    host: HostSample = HostSample()
    load: EngineLoad = EngineLoad()
    model_download: ModelDownload | None = None


class HeartbeatAck(BaseModel):
    ok: bool = True
    integrity_ok: bool


class InstanceLoad(BaseModel):
    """Latest load of an instance (INSTANCE_LOAD hash), read by the gateway and the autoscaler."""

    instance_id: str
    ts: float  # epoch seconds of the heartbeat's arrival
    engine_ready: bool
    engine_state: str
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    in_flight: float | None = None
    gpu_utilization: float | None = None  # mean over GPUs, percent
    model_download: ModelDownload | None = None


class GatewayLoad(BaseModel):
    """A gateway replica's load for one deployment, published every `period_s` to the hash
    `gateway_load_key(deployment_id)` (field = replica id) for the autoscaler.

    The `*_total` figures are cumulative since the replica started (`started_at`), never reset:
    the autoscaler takes the difference between two reports to get any window it wants, so it
    misses nothing between its rounds. A report older than a few periods comes from a replica
    that stopped and is ignored (`stale_after_s`)."""

    ts: float  # epoch seconds when published
    period_s: float  # the replica's publish period (INVENTIV_GATEWAY_LOAD_PUBLISH_S)
    started_at: float  # when the replica's counters started at 0
    replica_id: str  # host:pid of the gateway process
    model: str  # served name of the deployment
    queue_length: int  # requests waiting in this replica's queue now
    in_flight: int  # requests this replica has on the deployment's instances now
    arrivals_total: int = 0  # requests for the deployment (queued or not)
    rejected_total: int = 0  # turned away with 503 (queue full or deadline)
    routed_at_once_total: int = 0  # given an instance without waiting (a wait of 0)
    dequeued_total: int = 0  # left the queue: with an instance, or at the deadline
    queue_wait_s_total: float = 0.0  # summed wait of the requests that left the queue
    completed_total: int = 0  # finished on an instance (any outcome)
    # Tokens of the requests that finished (the engine's usage; a cut stream: what it relayed).
    prompt_tokens_total: int = 0
    output_tokens_total: int = 0
    active_request_s_total: float = 0.0  # integral of running + queued requests over time
    # Time to first token, a cumulative histogram: (upper bound in seconds, count at or below).
    ttft_buckets: list[tuple[float, int]] = []

    def stale_after_s(self) -> float:
        return max(5.0, 5 * self.period_s)


# ---------------------------------------------------------------- the machine tunnel
# One WebSocket per machine (agent/tunnel.py dials, tunnel/hub.py answers). Text frames are JSON
# control messages ({"type": ...}); binary frames carry HTTP bodies: a 4-byte stream id, one flag
# byte (1: the body ends here) and the bytes.

TUNNEL_PATH = "/tunnel/connect"
TUNNEL_CLOSE_REFUSED = 4401  # unknown machine, wrong credential or signature: do not retry
TUNNEL_CLOSE_REVOKED = 4403  # the machine was revoked: stop the engine, do not reconnect
_DATA_HEAD = struct.Struct(">IB")


def tunnel_data(stream: int, chunk: bytes, *, end: bool = False) -> bytes:
    return _DATA_HEAD.pack(stream, 1 if end else 0) + chunk


def parse_tunnel_data(frame: bytes) -> tuple[int, bool, bytes]:
    """(stream id, last frame of the body, bytes); ValueError for a frame too short."""
    if len(frame) < _DATA_HEAD.size:
        raise ValueError("tunnel data frame shorter than its header")
    stream, end = _DATA_HEAD.unpack_from(frame)
    return stream, bool(end), frame[_DATA_HEAD.size :]


# ---------------------------------------------------------------- the control plane's identity
# A machine pins the control plane's TLS key (like kubeadm's --discovery-token-ca-cert-hash): the
# enrolment command carries `sha256:<hex>` of each public TLS certificate's SubjectPublicKeyInfo,
# and the agent talks only to a peer presenting one of those keys (agent/tunnel.py).

PIN_PREFIX = "sha256:"
_PIN_HEX = 64


def public_key_pin(certificate_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (its key, DER): the same across
    renewals that keep the key, whoever signed it."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_der_x509_certificate(certificate_der).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def certificate_file_pin(pem: bytes) -> str:
    """The pin of a PEM certificate file's first certificate (the leaf of a full chain)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certificates = x509.load_pem_x509_certificates(pem)  # ValueError when there is none
    return public_key_pin(certificates[0].public_bytes(Encoding.DER))


def parse_pin(text: str) -> str:
    """A pin as `sha256:` and 64 hex digits, lower-cased; ValueError naming the shape otherwise."""
    value = text.strip()
    digest = value[len(PIN_PREFIX) :] if value.lower().startswith(PIN_PREFIX) else ""
    if len(digest) != _PIN_HEX or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise ValueError(
            f"a pin is {PIN_PREFIX}<{_PIN_HEX} hex digits> (the SHA-256 of the control plane's "
            f"TLS public key, as the enrolment command gives it), not {value[:80]!r}"
        )
    return PIN_PREFIX + digest.lower()
