"""AWS provider settings (INVENTIV_AWS_*).

Credentials come only from the environment (or a `.env` the operator controls) and are `SecretStr`:
their repr is masked, so they never reach a log line or an API response. No SDK is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from activities.providers.base import ProviderSettings

if TYPE_CHECKING:
    from core.settings import Settings


class AWSSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_AWS_", extra="ignore")

    access_key_id: SecretStr | None = Field(default=None, description="IAM access key id")
    secret_access_key: SecretStr | None = Field(default=None, description="IAM secret access key")
    session_token: SecretStr | None = Field(default=None, description="STS session token")
    region: str = Field(default="us-east-1", description="EC2 region")
    endpoint_url: str | None = Field(
        default=None, description="EC2 endpoint override (a stand-in such as moto's server)"
    )
    pricing_region: Literal["us-east-1", "eu-central-1", "ap-south-1"] = Field(
        default="us-east-1",
        description="Region whose Price List Query API endpoint is asked (us-east-1, eu-central-1 "
        "or ap-south-1, the only three); the prices read are INVENTIV_AWS_REGION's",
    )
    pricing_endpoint_url: str | None = Field(
        default=None,
        description="Price List Query API endpoint override (a stand-in); unset: AWS's own in "
        "the pricing region",
    )
    pricing_timeout_s: float = Field(
        default=5,
        description="Connect and read timeout of each Price List call; past it, or throttled, "
        "or refused, a type keeps the static list price",
    )
    ami_ids: dict[str, str] = Field(
        default_factory=dict,
        description='AMI per flavor as JSON, e.g. {"nvidia-h100": "ami-..."}; else looked up by name',
    )
    subnet_id: str | None = Field(default=None, description="Subnet for instances")
    security_group_ids: list[str] = Field(
        default_factory=list,
        description="Security groups of instances (required): they must admit the engine and "
        "agent ports from the control plane only",
    )
    key_name: str | None = Field(default=None, description="EC2 key pair for operator SSH access")
    iam_instance_profile: str | None = Field(
        default=None, description="Instance profile name (e.g. S3 read for the model cache)"
    )
    elastic_ip: bool = Field(default=False, description="Allocate and associate an Elastic IP")
    use_private_ip: bool = Field(
        default=False,
        description="Reach agents at their private address (control plane inside the VPC)",
    )
    root_volume_gb: int = Field(
        default=100, description="Root EBS volume size (at least the AMI's snapshot size)"
    )
    model_cache_dir: str = Field(
        default="/mnt/models", description="Where the first data volume is mounted (model cache)"
    )
    not_found_window_s: float = Field(
        default=20,
        description="How long an instance EC2 says is NotFound may still appear (EC2 is "
        "eventually consistent) before it counts as gone",
    )
    model_s3_prefix: str = Field(
        default="", description="s3://bucket/prefix the agent tries before the hub"
    )
    waiter_delay_s: int = Field(default=5, description="Seconds between waiter polls")
    waiter_max_attempts: int = Field(default=60, description="Waiter polls before giving up")

    def unconfigured(self, settings: Settings) -> str | None:
        if self.access_key_id and self.secret_access_key:
            return None
        return "INVENTIV_AWS_ACCESS_KEY_ID or _SECRET_ACCESS_KEY unset"
