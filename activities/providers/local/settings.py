"""Local provider settings (INVENTIV_LOCAL_*): fault injection, which drives every lifecycle path
in tests and in `make dev`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from activities.providers.base import ProviderSettings


class LocalFaults(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_LOCAL_", extra="ignore")

    fail_create: str | None = Field(
        default=None, description="Make create fail: 'transient', 'capacity' or 'invalid'"
    )
    no_ip: bool = Field(default=False, description="Machines never get an IP address")
    engine_never_ready: bool = Field(
        default=False, description="The engine starts but never serves the model"
    )
    delete_failures: int = Field(
        default=0, description="Each machine/volume delete fails this many times first"
    )
    vanish_after_s: float | None = Field(
        default=None, description="Machines disappear (process and record) after this many seconds"
    )
    api_outage_s: float = Field(
        default=0,
        description="Every call answers as a provider 5xx (transient) for this many seconds "
        "from the adapter's first call",
    )
    not_found_for_s: float = Field(
        default=0,
        description="A new machine is not found (get, listings) until it is this old, as an "
        "eventually consistent API answers",
    )
    capacity_lost_at_start: bool = Field(
        default=False,
        description="Machines are reclaimed at power-on for lack of capacity (created, then "
        "terminated by the provider)",
    )
    boot_volume_gb: float = Field(default=20, description="Size recorded for each boot volume")
