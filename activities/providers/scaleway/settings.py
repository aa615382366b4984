"""Scaleway provider settings (INVENTIV_SCALEWAY_*).

Credentials come only from the environment (or a `.env` the operator controls) and are `SecretStr`:
their repr is masked, so they never reach a log line or an API response. No SDK is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from activities.providers.base import ProviderSettings

if TYPE_CHECKING:
    from core.settings import Settings


class ScalewaySettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_SCALEWAY_", extra="ignore")

    access_key: SecretStr | None = Field(default=None, description="API access key (SCW...)")
    secret_key: SecretStr | None = Field(default=None, description="API secret key")
    project_id: str | None = Field(default=None, description="Project the servers are billed to")
    default_zone: str = Field(default="fr-par-2", description="Zone when a request names none")
    api_url: str = Field(default="https://api.scaleway.com", description="Scaleway API base URL")
    flexible_ip: bool = Field(
        default=True, description="Reserve a flexible IP per server (else a dynamic IP)"
    )
    private_network_id: str | None = Field(
        default=None, description="Attach servers to this Private Network (VPC) when set"
    )
    security_group_id: str | None = Field(
        default=None,
        description="Security group of servers (required): it must admit the engine and agent "
        "ports from the control plane only",
    )
    boot_volume_gb: int = Field(default=100, description="Boot volume size")
    poll_interval_s: float = Field(
        default=2, description="Seconds between reads while a new volume is being created"
    )
    state_timeout_s: float = Field(
        default=60, description="How long create waits for a new volume before retrying later"
    )
    model_cache_dir: str = Field(
        default="/mnt/models", description="Where the first block volume is mounted (model cache)"
    )

    def unconfigured(self, settings: Settings) -> str | None:
        if self.access_key and self.secret_key and self.project_id:
            return None
        return "INVENTIV_SCALEWAY_ACCESS_KEY, _SECRET_KEY or _PROJECT_ID unset"
