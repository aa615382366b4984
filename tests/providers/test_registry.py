"""The registry turns an adapter on only with its credentials, and never logs them."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from activities.providers.registry import build_providers
from activities.providers.settings import AWSSettings, ScalewaySettings, SSHSettings
from core.settings import Settings


def test_only_configured_providers_are_enabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/db")
    secret_scw, secret_aws = str(uuid.uuid4()), "aws-secret-" + uuid.uuid4().hex
    with caplog.at_level(logging.INFO, logger="activities.providers.registry"):
        bare = build_providers(
            settings, scaleway=ScalewaySettings(), aws=AWSSettings(), ssh=SSHSettings()
        )
        full = build_providers(
            settings,
            scaleway=ScalewaySettings(
                access_key="SCWXXXXXXXXXXXXXXXXX",
                secret_key=secret_scw,
                project_id=str(uuid.uuid4()),
            ),
            aws=AWSSettings(access_key_id="AKIAEXAMPLE", secret_access_key=secret_aws),
            ssh=SSHSettings(enabled=True),
        )
        broken = build_providers(
            settings,
            scaleway=ScalewaySettings(
                access_key="SCWXXXXXXXXXXXXXXXXX",
                secret_key="not-a-uuid-" + secret_aws,
                project_id=str(uuid.uuid4()),
            ),
            aws=AWSSettings(),
            ssh=SSHSettings(),
        )
    assert sorted(bare) == ["local"]
    assert sorted(full) == ["aws", "local", "scaleway", "ssh"]
    assert sorted(broken) == ["local"]
    assert "providers enabled: aws, local, scaleway, ssh" in caplog.text
    assert (
        "provider aws disabled: INVENTIV_AWS_ACCESS_KEY_ID or _SECRET_ACCESS_KEY unset"
        in caplog.text
    )
    assert "provider scaleway disabled: malformed Scaleway settings" in caplog.text
    assert secret_scw not in caplog.text and secret_aws not in caplog.text
