"""Agent settings: environment variables prefixed INVENTIV_AGENT_ (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_AGENT_", extra="ignore")

    host: str = Field(default="0.0.0.0", description="Address the agent's HTTP server binds to")
    port: int = Field(default=8090, description="Agent HTTP port")
    engine_host: str = Field(default="127.0.0.1", description="Address the engine binds to")
    engine_port: int = Field(default=8000, description="Engine (OpenAI API) port")
    model: str = Field(default="demo-llm", description="Model to serve (hub id or local path)")
    served_name: str | None = Field(
        default=None, description="Name clients ask for; the model when unset"
    )
    engine_command: str = Field(
        default="vllm serve",
        description="Engine command; the model is passed positionally, then vLLM flags",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description='Extra engine flags as JSON, e.g. {"max-num-seqs": 64}; true -> bare flag',
    )
    gpu_count: int = Field(default=0, description="GPUs to use (--tensor-parallel-size); 0: omit")
    gpu_memory_utilization: float | None = Field(default=None, description="vLLM's flag")
    max_model_len: int | None = Field(default=None, description="vLLM's flag")
    max_num_seqs: int | None = Field(default=None, description="vLLM's flag")

    control_plane_url: str = Field(
        default="", description="API base URL for heartbeats (e.g. http://api:8000); off when empty"
    )
    instance_id: str = Field(default="", description="This machine's Inventiv instance id")
    token: SecretStr = Field(default=SecretStr(""), description="Per-instance heartbeat token")
    engine_api_key: SecretStr = Field(
        default=SecretStr(""),
        description="The engine's API key (vLLM's --api-key), handed to it as VLLM_API_KEY; "
        "the agent's probes send it. Off (an open engine) when empty",
    )
    heartbeat_interval_s: float = Field(default=5.0, description="Heartbeat period")

    model_cache_dir: Path | None = Field(
        default=None,
        description="Download the model here before starting the engine; off when unset",
    )
    model_s3_prefix: str = Field(
        default="", description="s3://bucket/prefix tried before the hub (boto3 credentials)"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint URL")
    hf_endpoint: str = Field(default="https://huggingface.co", description="Hugging Face hub URL")
    hf_token: SecretStr = Field(default=SecretStr(""), description="Hub token for gated models")
    model_revision: str = Field(default="main", description="Hub revision to download")
    download_attempts: int = Field(default=3, description="Tries per file before giving up")
    verify_cache: bool = Field(
        default=True, description="Check cached files' digests at start, not only their sizes"
    )

    restart_backoff_s: float = Field(default=1.0, description="First restart delay; doubles")
    restart_backoff_max_s: float = Field(default=60.0, description="Longest restart delay")
    engine_stable_s: float = Field(
        default=120.0, description="An engine up this long resets the backoff and crash count"
    )
    crash_loop_threshold: int = Field(
        default=5, description="Quick exits in a row before reporting a crash loop"
    )
    engine_stop_timeout_s: float = Field(
        default=15.0, description="Grace after SIGTERM before the engine is killed"
    )
    engine_probe_timeout_s: float = Field(default=2.0, description="Timeout of engine probes")
    log_file: Path | None = Field(default=None, description="Also write the agent's log here")

    @property
    def served(self) -> str:
        return self.served_name or self.model

    @property
    def engine_url(self) -> str:
        host = "127.0.0.1" if self.engine_host in ("0.0.0.0", "::") else self.engine_host
        return f"http://{host}:{self.engine_port}"
