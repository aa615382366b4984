"""The gateway refuses to start without its database, Redis and secret key, and says which setting
is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import MissingSettingError, Settings
from gateway.app import create_app

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_url_is_named_when_the_app_is_built() -> None:
    with pytest.raises(MissingSettingError, match="INVENTIV_REDIS_URL"):
        create_app(Settings(redis_url=None, database_url="postgresql://db/inventiv"))


def test_python_m_gateway_exits_naming_every_missing_setting() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL"} and not k.startswith("INVENTIV_")
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    assert b"INVENTIV_DATABASE_URL (or DATABASE_URL)" in done.stderr
    assert b"INVENTIV_REDIS_URL (or REDIS_URL)" in done.stderr
    assert b"INVENTIV_SECRET_KEY" in done.stderr  # the engines' API keys derive from it
