"""Gateway-only settings (environment variables prefixed INVENTIV_GATEWAY_).

Addresses (host, port, database, Redis) come from core.settings.Settings; these tune the data
plane itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.protocols.http_server import ServerLimits


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INVENTIV_GATEWAY_", extra="ignore", populate_by_name=True
    )

    workers: int = Field(
        default=1, ge=1, description="Worker processes sharing the port (SO_REUSEPORT)"
    )
    server: Literal["lean", "uvicorn"] = Field(
        default="lean",
        description="HTTP server: the built-in lean one (fastest) or uvicorn (same ASGI app)",
    )
    # Routing
    max_inflight_per_gpu: int = Field(
        default=64, ge=1, description="Requests in flight per GPU before an instance is saturated"
    )
    sticky_load_factor: float = Field(
        default=1.25,
        gt=1.0,
        description="Bounded-load stickiness: a session's instance is used unless its load "
        "exceeds this factor times the average",
    )
    session_header: str = Field(
        default="x-session-id", description="Header naming a session (routing 'sticky_header')"
    )
    load_stale_s: float = Field(
        default=5.0, description="Engine load reports older than this are ignored"
    )
    prefix_block_chars: int = Field(
        default=64,
        ge=1,
        description="Routing 'prefix_aware': characters per indexed prompt block, about one KV "
        "block of the engine (16 tokens)",
    )
    prefix_index_blocks: int = Field(
        default=32768,
        ge=1,
        description="Routing 'prefix_aware': prompt blocks remembered per instance (LRU), about "
        "its KV cache in blocks",
    )
    prefix_min_match: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Routing 'prefix_aware': share of a prompt's blocks an instance must hold to "
        "be chosen for its cache; else the least loaded",
    )
    prefix_load_factor: float = Field(
        default=2.0,
        gt=1.0,
        description="Routing 'prefix_aware': an instance holding the prefix is skipped when its "
        "load would exceed this factor times its fair share",
    )
    prefix_load_slack: int = Field(
        default=16,
        ge=0,
        description="Routing 'prefix_aware': ... and more than this many requests above the least "
        "loaded instance's (few requests apart is noise, not overload; 0: the factor alone)",
    )
    eject_after_failures: int = Field(
        default=3, ge=1, description="Consecutive failures before an instance is ejected"
    )
    eject_s: float = Field(default=10.0, description="How long an ejected instance is skipped")
    # Queue
    queue_size: int = Field(default=1000, ge=0, description="Waiting requests per model, at most")
    queue_deadline_s: float = Field(
        default=30.0, description="Longest wait in the queue before 503 with Retry-After"
    )
    # HTTP edge (the lean server; uvicorn has its own settings)
    max_request_line_bytes: int = Field(
        default=8192, ge=256, description="Longest request line (method, path, query): else 414"
    )
    max_header_bytes: int = Field(
        default=65536, ge=1024, description="Largest request header block: else 431, then close"
    )
    max_headers: int = Field(default=100, ge=1, description="Most request headers: else 431")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline for a whole request header block: else 408"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline for receiving a request body: else 408"
    )
    write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A response write not drained by the client within this drops the "
        "connection (a stalled reader frees its instance slot)",
    )
    max_connections_per_client: int = Field(
        default=1024,
        ge=0,
        description="Open connections per client address, per process (0: no cap; raise it "
        "behind a load balancer that does not keep client addresses)",
    )
    max_concurrent_per_key: int = Field(
        default=256,
        ge=0,
        description="Requests in flight per API key, per process: more answer 429 (0: no cap)",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("INVENTIV_GATEWAY_METRICS_TOKEN", "INVENTIV_METRICS_TOKEN"),
        description="Bearer token required by /metrics; without one, /metrics answers loopback "
        "clients only",
    )
    # Token accounting
    tpm_default_reserve: int = Field(
        default=1024,
        ge=1,
        description="Tokens reserved against a key's TPM limit at admission when the request "
        "sets no max_tokens (settled to the real usage afterwards)",
    )
    redis_connect_timeout_s: float = Field(
        default=1.0, gt=0, description="Connecting to Redis: longest wait"
    )
    redis_reply_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="A Redis reply: longest wait (then the rate limit fails open, see the "
        "security model)",
    )
    # Upstream
    connect_timeout_s: float = Field(default=5.0, description="Engine connect timeout")
    keepalive_interval_s: float = Field(
        default=15.0, description="SSE keep-alive comment period while waiting for a first token"
    )
    # Background refreshes
    registry_refresh_s: float = Field(
        default=3.0, description="Full re-read of the routing registry (safety net for pub/sub)"
    )
    load_poll_s: float = Field(default=1.0, description="Engine load poll period")
    deployments_refresh_s: float = Field(
        default=5.0, description="Refresh period of the model -> deployment cache"
    )
    load_publish_s: float = Field(
        default=1.0, description="Period of the load signals published for the autoscaler"
    )
    unknown_key_ttl_s: float = Field(
        default=5.0, description="How long an unknown API key is remembered as unknown"
    )
    # Request logs
    log_flush_s: float = Field(default=1.0, description="Request log batch period")
    log_batch_size: int = Field(default=5000, ge=1, description="Rows per request log insert")
    log_buffer_max: int = Field(
        default=100_000, ge=1, description="Request logs kept while the database is down"
    )

    def server_limits(self) -> ServerLimits:
        return ServerLimits(
            max_request_line_bytes=self.max_request_line_bytes,
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            write_timeout_s=self.write_timeout_s,
            max_connections_per_client=self.max_connections_per_client,
        )
