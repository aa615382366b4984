"""Bare-metal (SSH) provider settings (INVENTIV_SSH_*).

Credentials come only from the environment (or a `.env` the operator controls) and are `SecretStr`:
their repr is masked, so they never reach a log line or an API response. No SDK is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from activities.providers.base import ProviderSettings

if TYPE_CHECKING:
    from core.settings import Settings


class SSHSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_SSH_", extra="ignore")

    enabled: bool = Field(default=False, description="Offer registered bare-metal hosts")
    known_hosts: Path | None = Field(
        default=None,
        description="known_hosts file; a host's own pinned key (registered with it) is used first",
    )
    key_encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet key that encrypts private keys registered through the API",
    )
    connect_timeout_s: float = Field(default=10.0, description="SSH connect timeout")
    remote_dir: str = Field(
        default=".inventiv", description="Working folder on hosts, relative to the user's home"
    )
    price_per_hour: float = Field(default=0.0, description="Internal price of a bare-metal hour")
    stop_timeout_s: int = Field(
        default=25,
        description="Teardown waits this long for the agent to stop its engine (the agent gives "
        "the engine 15 s) before killing what is left, the engine's process group included",
    )

    tenant_users: bool = Field(
        default=True,
        description="Without a worker container, run each instance as a Unix user of its own, "
        "removed with everything it wrote at termination (needs root or passwordless sudo on "
        "the host); false runs every instance as the SSH user",
    )
    tenant_home_dir: str = Field(
        default="/home", description="Where the per-instance users' home folders are made"
    )
    tenant_groups: str = Field(
        default="video,render",
        description="Groups per-instance users join (those the host has), for the GPU devices",
    )

    def unconfigured(self, settings: Settings) -> str | None:
        if not self.enabled:
            return "INVENTIV_SSH_ENABLED is not true"
        if not settings.database_url:
            return "no database for the bare-metal host registry"
        return None
