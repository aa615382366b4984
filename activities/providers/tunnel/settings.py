"""Tunnelled machines' settings (INVENTIV_TUNNEL_*): the tunnel endpoint machines dial out to,
the loopback relay the gateway and the worker reach them through, credentials and sharing.

Read by the API (enrolment answers with `public_url`), the `inventiv tunnel` process and the
`tunnel` provider. No SDK is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from activities.providers.base import ProviderSettings

if TYPE_CHECKING:
    from core.settings import Settings


class TunnelSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_TUNNEL_", extra="ignore")

    enabled: bool = Field(default=False, description="Lend machines that joined through the tunnel")
    public_url: str = Field(
        default="ws://127.0.0.1:8070",
        description="Where machines dial the tunnel (wss://… in production), told at enrolment",
    )
    host: str = Field(default="0.0.0.0", description="Address the tunnel endpoint listens on")
    port: int = Field(default=8070, description="Port of the tunnel endpoint (WebSocket)")
    tls_cert: Path | None = Field(default=None, description="TLS certificate of the endpoint")
    tls_key: Path | None = Field(default=None, description="TLS private key of the endpoint")
    relay_host: str = Field(
        default="127.0.0.1",
        description="Address of the relay the gateway and worker reach machines through; keep it "
        "private (loopback or the cluster network)",
    )
    relay_port: int = Field(default=8071, description="Port of the relay (fixed: URLs are stored)")
    enrolment_ttl_s: int = Field(default=3600, description="Default life of an enrolment token")
    credential_ttl_s: int = Field(
        default=7 * 24 * 3600,
        description="Life of a machine credential; rotated over the tunnel when a third is left",
    )
    sync_interval_s: float = Field(
        default=1.0,
        description="How often the endpoint re-reads its machines (claims, revocations, sharing)",
    )
    drain_lead_s: float = Field(
        default=600.0,
        description="A machine is drained this long before its time slot ends or its quota runs out",
    )
    price_per_hour: float = Field(default=0.0, description="Internal price of a tunnelled hour")

    def unconfigured(self, settings: Settings) -> str | None:
        if not self.enabled:
            return "INVENTIV_TUNNEL_ENABLED is not true"
        if not settings.database_url:
            return "no database for the machine registry"
        return None

    @property
    def relay_base(self) -> str:
        return f"http://{self.relay_host}:{self.relay_port}"
