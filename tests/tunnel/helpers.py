"""A machine behind NAT for tests: the tunnel endpoint in this loop, the agent as a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from activities.providers.tunnel.settings import TunnelSettings
from agent.tunnel import MachineState
from core.embedded import free_port
from core.models import Machine, utcnow
from core.settings import Settings
from core.tokens import new_machine_credential, token_hash
from tests.factories import make_user
from tunnel.hub import Clock, Drain
from tunnel.server import TunnelServer

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


@dataclass
class ConnectedMachine:
    machine_id: uuid.UUID
    process: subprocess.Popen[bytes]
    state_dir: Path
    endpoint: TunnelServer


@asynccontextmanager
async def connected_machine(
    settings: Settings,
    tunnel: TunnelSettings,
    sessionmaker: Any,
    state_dir: Path,
    *,
    drain: Drain | None = None,
    clock: Clock = utcnow,
    **machine_fields: Any,
) -> AsyncIterator[ConnectedMachine]:
    """A shared machine enrolled straight into the database (its key made here; `machine_fields`
    such as its owner's slots), the tunnel endpoint running in this loop (draining with `drain`,
    its time from `clock`), and the machine's agent connected to it as a process."""
    key = Ed25519PrivateKey.generate()
    credential = new_machine_credential()
    async with sessionmaker() as session:
        owner = await make_user(session)
        machine = Machine(
            name=f"stand-{uuid.uuid4().hex[:6]}",
            owner_id=owner.id,
            public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
            credential_hash=token_hash(credential),
            credential_expires_at=utcnow() + timedelta(days=1),
            **machine_fields,
        )
        session.add(machine)
        await session.commit()
    MachineState(
        machine_id=str(machine.id),
        credential=credential,
        credential_expires_at=machine.credential_expires_at.isoformat(),
        tunnel_url=tunnel.public_url,
        private_key=key.private_bytes_raw().hex(),
    ).save(state_dir)
    endpoint = TunnelServer(settings, tunnel, drain=drain, clock=clock)
    await endpoint.start()
    process = start_machine(state_dir, "connect", "--state-dir", str(state_dir))
    try:

        async def online() -> bool:
            async with sessionmaker() as session:
                row = await session.get(Machine, machine.id)
            return row is not None and row.connected_at is not None

        await eventually(online, 30, "the machine connected")
        yield ConnectedMachine(machine.id, process, state_dir, endpoint)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
        await endpoint.stop()
