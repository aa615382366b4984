"""A machine behind NAT for tests: the tunnel endpoint in this loop, the agent as a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from activities.providers.tunnel.settings import TunnelSettings
from core.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def tunnel_settings(monkeypatch: pytest.MonkeyPatch, **overrides: object) -> TunnelSettings:
    """Tunnel settings on free loopback ports, in the environment too (the API reads them)."""
    port = free_port()
    values: dict[str, object] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": port,
        "public_url": f"ws://127.0.0.1:{port}",
        "relay_port": free_port(),
        "sync_interval_s": 0.5,
        **overrides,
    }
    for name, value in values.items():
        monkeypatch.setenv(
            f"INVENTIV_TUNNEL_{name.upper()}",
            str(value).lower() if isinstance(value, bool) else str(value),
        )
    return TunnelSettings()


def start_machine(state_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m agent <args>` as a machine would run it (its own process, its own folder)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INVENTIV_MACHINE_DIR": str(state_dir)}
    log = (state_dir.parent / f"{state_dir.name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args], cwd=ROOT, env=env, stdout=log, stderr=log
    )


def listening_sockets(pid: int) -> list[str]:
    """The LISTEN sockets of that process alone (not its children: the engine listens on
    loopback, the agent must not listen at all)."""
    return [
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until `check` passed; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")
