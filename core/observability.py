"""Observability settings: what Prometheus scrapes and how it authenticates, where traces go.

Kept apart from the control-plane `Settings` so the monitoring stack can be configured (and
documented) on its own; every process reads the same INVENTIV_ variables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # the gateway reads these settings and must not load Temporal
    from temporalio.runtime import Runtime


class ObservabilitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_", extra="ignore")

    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token Prometheus sends to the API's /metrics and service discovery "
            "(an admin's session token works too); without it only admins may scrape"
        ),
    )
    worker_metrics_port: int = Field(
        default=9464,
        description="Port of the worker's Prometheus endpoint (Temporal SDK metrics); 0: off",
    )
    prometheus_port: int = Field(
        default=9090, description="Port of the Prometheus `inventiv dev` starts when installed"
    )
    project_monthly_budgets: dict[str, float] = Field(
        default_factory=dict,
        description=(
            'Monthly budget per project name, JSON like {"research": 500} in the currency of '
            "its instance types; exported for the over-budget alert"
        ),
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description=(
            "OTLP/HTTP collector the API, worker and gateway send traces to, like "
            "http://localhost:4318 (spans go to its /v1/traces); unset: no tracing at all"
        ),
    )
    otlp_headers: SecretStr | None = Field(
        default=None,
        description=(
            "Headers sent with each trace export, `name=value,name=value` (a hosted "
            "collector's credentials)"
        ),
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of new traces recorded (0 to 1); a request that arrives with a sampled "
            "`traceparent` is always recorded"
        ),
    )


def worker_metrics_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime serving the SDK's metrics at http://bind_address/metrics, durations
    in seconds, with the unit and `_total` suffixes Prometheus names carry."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    config = PrometheusConfig(
        bind_address=bind_address,
        durations_as_seconds=True,
        unit_suffix=True,
        counters_total_suffix=True,
    )
    return Runtime(telemetry=TelemetryConfig(metrics=config))
