"""Provider settings: one pydantic-settings class per provider.

Credentials come only from the environment (or a `.env` the operator controls) and are `SecretStr`:
their repr is masked, so they never reach a log line or an API response.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ScalewaySettings(BaseSettings):
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
    security_group_id: str | None = Field(default=None, description="Security group for servers")
    boot_volume_gb: int = Field(default=100, description="Boot volume size")
    model_cache_dir: str = Field(
        default="/mnt/models", description="Where the first block volume is mounted (model cache)"
    )
    poll_interval_s: float = Field(default=2.0, description="State polling period")
    state_timeout_s: float = Field(default=300.0, description="Longest wait for a power action")

    @property
    def configured(self) -> bool:
        return bool(self.access_key and self.secret_key and self.project_id)


class AWSSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTIV_AWS_", extra="ignore")

    access_key_id: SecretStr | None = Field(default=None, description="IAM access key id")
    secret_access_key: SecretStr | None = Field(default=None, description="IAM secret access key")
    session_token: SecretStr | None = Field(default=None, description="STS session token")
    region: str = Field(default="us-east-1", description="EC2 region")
    endpoint_url: str | None = Field(
        default=None, description="EC2 endpoint override (a stand-in such as moto's server)"
    )
    ami_ids: dict[str, str] = Field(
        default_factory=dict,
        description='AMI per flavor as JSON, e.g. {"nvidia-h100": "ami-..."}; else looked up by name',
    )
    subnet_id: str | None = Field(default=None, description="Subnet for instances")
    security_group_ids: list[str] = Field(default_factory=list, description="Security groups")
    key_name: str | None = Field(default=None, description="EC2 key pair for operator SSH access")
    iam_instance_profile: str | None = Field(
        default=None, description="Instance profile name (e.g. S3 read for the model cache)"
    )
    elastic_ip: bool = Field(default=False, description="Allocate and associate an Elastic IP")
    use_private_ip: bool = Field(
        default=False,
        description="Reach agents at their private address (control plane inside the VPC)",
    )
    root_volume_gb: int = Field(default=100, description="Root EBS volume size")
    model_s3_prefix: str = Field(
        default="", description="s3://bucket/prefix the agent tries before the hub"
    )
    waiter_delay_s: int = Field(default=5, description="Seconds between waiter polls")
    waiter_max_attempts: int = Field(default=60, description="Waiter polls before giving up")

    @property
    def configured(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)


class SSHSettings(BaseSettings):
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
