"""Settings are resolved once: a service started without a required setting refuses to start and
names the variable, instead of running with an empty URL or an empty signing key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.settings import MissingSettingError, Settings


def _bare_env() -> dict[str, str]:
    """The environment less every setting of ours (and the unprefixed URLs)."""
    unprefixed = {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS"}
    return {
        k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_") and k not in unprefixed
    }


@pytest.mark.parametrize("command", ["api", "worker", "migrate", "gateway"])
def test_service_without_settings_refuses_to_start_naming_them(command: str, tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "inventiv", command],
        env=_bare_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "INVENTIV_DATABASE_URL" in done.stderr + done.stdout


def test_service_names_only_what_is_missing(tmp_path) -> None:
    env = _bare_env() | {
        "INVENTIV_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x",
        "INVENTIV_REDIS_URL": "redis://127.0.0.1:1",
        "INVENTIV_TEMPORAL_ADDRESS": "127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "inventiv", "api"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = done.stderr + done.stdout
    assert "INVENTIV_SECRET_KEY" in output and "INVENTIV_DATABASE_URL" not in output


def test_require_returns_value_or_names_the_variable() -> None:
    settings = Settings(database_url="postgresql://x", redis_url=None, _env_file=None)
    assert settings.require("database_url") == "postgresql://x"
    with pytest.raises(MissingSettingError, match=r"INVENTIV_REDIS_URL \(or REDIS_URL\)"):
        settings.require("redis_url")
