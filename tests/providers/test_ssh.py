"""Bare metal over SSH against a real SSH server on loopback: the agent really uploaded, verified,
started with the cpu-sim flavor and answering; host keys verified; claims atomic."""

from __future__ import annotations

import asyncio
import shlex
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.providers.base import (
    CreateRequest,
    InvalidRequestError,
    NoCapacityError,
    ProvisioningError,
    TransientProviderError,
    VolumeSpec,
)
from activities.providers.local.adapter import machine_pids
from activities.providers.ssh.adapter import SSHCompute
from activities.providers.ssh.keys import encrypt_private_key
from activities.providers.ssh.settings import SSHSettings
from agent.identity import bundled_agent
from agent.settings import AgentSettings
from core.embedded import free_port
from core.models import BareMetalHost, Instance
from tests.factories import seed
from tests.providers.conftest import SSHHost

AGENT_SHA256 = bundled_agent().checksum

Sessions = async_sessionmaker[AsyncSession]


async def register(sessions: Sessions, ssh: SSHHost, **kwargs: object) -> BareMetalHost:
    host = BareMetalHost(
        **{  # type: ignore[arg-type]
            "name": f"bm-{uuid.uuid4().hex[:6]}",
            "address": "127.0.0.1",
            "port": ssh.port,
            "user": "inventiv",
            "private_key_ref": f"file:{ssh.client_key_path}",
            "host_key": ssh.public_host_key(),
            "python": sys.executable,
            "agent_port": free_port(),
            "engine_port": free_port(),
            "gpu_inventory": [],
            **kwargs,
        }
    )
    async with sessions() as session:
        session.add(host)
        await session.commit()
        await session.refresh(host)
    return host


async def claimed_by(sessions: Sessions, host: BareMetalHost) -> uuid.UUID | None:
    async with sessions() as session:
        fresh = await session.get(BareMetalHost, host.id)
        assert fresh is not None
        return fresh.claimed_by


def _request(sha256: str = AGENT_SHA256) -> CreateRequest:
    return CreateRequest(
        instance_id=str(uuid.uuid4()),
        instance_type="bare-metal",
        model="demo-llm",
        served_name="demo",
        flavor="cpu-sim",
        agent_env={"WORKER_AGENT_SHA256": sha256, "INVENTIV_AGENT_TOKEN": "tok-secret"},
    )


async def healthz(url: str) -> int | None:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            return (await client.get(f"{url}/healthz")).status_code
        except httpx.TransportError:
            return None


async def test_agent_started_over_ssh_and_removed(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost
) -> None:
    settings = SSHSettings(
        enabled=True,
        key_encryption_key=SecretStr(Fernet.generate_key().decode()),
        tenant_users=False,  # as the SSH user; a user each: test_ssh_tenancy.py
    )
    # The key registered through the API path: stored encrypted, never in clear.
    ref = encrypt_private_key(ssh_host.client_key_path.read_text(), settings)
    assert ref.startswith("fernet:") and "PRIVATE KEY" not in ref
    host = await register(sessionmaker, ssh_host, private_key_ref=ref)
    compute = SSHCompute(settings, db_url)
    request = _request()
    try:
        created = await compute.create(request)
        assert created.agent_url == f"http://127.0.0.1:{host.agent_port}"
        assert await healthz(created.agent_url) == 200  # bootstrap waited for it
        async with httpx.AsyncClient() as client:
            headers = {"Authorization": "Bearer tok-secret"}  # the instance's agent token
            info = (await client.get(f"{created.agent_url}/info", headers=headers)).json()
        assert info["checksum"] == AGENT_SHA256
        remote = ssh_host.home / ".inventiv" / request.instance_id
        assert (remote / "agent.env").stat().st_mode & 0o777 == 0o600
        assert "INVENTIV_AGENT_ENGINE_COMMAND=" in (remote / "agent.env").read_text()
        assert await claimed_by(sessionmaker, host) == uuid.UUID(request.instance_id)

        pid = (remote / "agent.pid").read_text()
        again = await compute.create(request)  # a retry finds the running agent
        assert again.resource_id == created.resource_id
        assert (remote / "agent.pid").read_text() == pid  # and starts no second one
        got = await compute.get(created.resource_id)
        assert got is not None and got.state == "running"
        assert [i.resource_id for i in await compute.list_tagged()] == [created.resource_id]

        await compute.delete(created.resource_id)
        assert await healthz(created.agent_url) is None  # agent and engine stopped
        assert not remote.exists()
        assert await claimed_by(sessionmaker, host) is None
        await compute.delete(created.resource_id)  # idempotent
        assert await compute.get(created.resource_id) is None
        assert await compute.list_tagged() == []
    finally:
        await compute.close()


async def test_wrong_checksum_is_refused(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost
) -> None:
    host = await register(sessionmaker, ssh_host)
    compute = SSHCompute(SSHSettings(enabled=True, tenant_users=False), db_url)
    request = _request(sha256="0" * 64)
    try:
        with pytest.raises(ProvisioningError, match=r"integrity check failed.*refusing to start"):
            await compute.create(request)
        assert await claimed_by(sessionmaker, host) is None
        assert not (ssh_host.home / ".inventiv" / request.instance_id).exists()
        assert await healthz(f"http://127.0.0.1:{host.agent_port}") is None
    finally:
        await compute.close()


async def test_wrong_host_key_is_refused(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost
) -> None:
    import asyncssh

    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    host = await register(sessionmaker, ssh_host, host_key=impostor)
    compute = SSHCompute(SSHSettings(enabled=True), db_url)
    try:
        with pytest.raises(InvalidRequestError, match="does not match the known one"):
            await compute.create(_request())
        assert await claimed_by(sessionmaker, host) is None
    finally:
        await compute.close()


async def test_unreachable_host_is_not_claimed(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost
) -> None:
    host = await register(sessionmaker, ssh_host, port=free_port())  # nothing listens there
    compute = SSHCompute(SSHSettings(enabled=True, connect_timeout_s=3), db_url)
    try:
        with pytest.raises(TransientProviderError, match=f"{host.name} .* is unreachable"):
            await compute.create(_request())
        assert await claimed_by(sessionmaker, host) is None
    finally:
        await compute.close()


async def test_claims_are_atomic(db_url: str, sessionmaker: Sessions, ssh_host: SSHHost) -> None:
    hosts = [await register(sessionmaker, ssh_host) for _ in range(3)]
    compute = SSHCompute(SSHSettings(enabled=True), db_url)
    try:
        instance_ids = [str(uuid.uuid4()) for _ in range(10)]
        claims = await asyncio.gather(*(compute.claim_host(i, "bare-metal") for i in instance_ids))
        won = [c.id for c in claims if c is not None]
        assert sorted(won) == sorted(h.id for h in hosts)  # each host exactly once
        with pytest.raises(NoCapacityError, match="no free bare-metal host"):
            await compute.create(_request())
        with_volume = _request()
        with_volume.volumes = [VolumeSpec(size_gb=10)]
        with pytest.raises(InvalidRequestError, match="no provider volumes"):
            await compute.create(with_volume)
        # A claim is per instance: asking again returns the same host.
        winner = next(i for i, c in zip(instance_ids, claims, strict=True) if c is not None)
        again = await compute.claim_host(winner, "bare-metal")
        assert again is not None and again.id in won
    finally:
        await compute.close()


async def test_project_hosts_serve_only_their_project(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, provider_kind="ssh", instance_type="bare-metal")
        instance = Instance(
            deployment_id=seeded.deployment.id, project_id=seeded.project.id,
            provider_id=seeded.provider.id, instance_type_id=seeded.instance_type.id,
            workflow_id="instance-x",
        )  # fmt: skip
        session.add(instance)
        await session.commit()
    shared = await register(sessionmaker, ssh_host)
    owned = await register(sessionmaker, ssh_host, project_id=seeded.project.id)
    compute = SSHCompute(SSHSettings(enabled=True), db_url)
    try:
        mine = await compute.claim_host(str(instance.id), "bare-metal")
        assert mine is not None and mine.id == owned.id  # its project's host before shared ones
        await compute.release_host(owned.id, str(instance.id))
        stranger = await compute.claim_host(str(uuid.uuid4()), "bare-metal")
        assert stranger is not None and stranger.id == shared.id
        assert (
            await compute.claim_host(str(uuid.uuid4()), "bare-metal") is None
        )  # owned: not for it
    finally:
        await compute.close()


# An engine like vLLM's: its worker runs in a process group of its own (and here ignores
# SIGTERM, as a wedged GPU worker can); the engine itself stops cleanly, in its own time.
ENGINE = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def stop(*_):
    time.sleep(2)
    open({marker!r}, "w").write("stopped cleanly")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(600)
"""


def test_teardown_outlasts_the_agents_engine_stop() -> None:
    assert SSHSettings().stop_timeout_s > AgentSettings().engine_stop_timeout_s


async def test_teardown_lets_the_engine_stop_and_kills_its_workers(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost, tmp_path: Path
) -> None:
    await register(sessionmaker, ssh_host)
    compute = SSHCompute(SSHSettings(enabled=True, tenant_users=False), db_url)
    marker = tmp_path / "engine-stopped"
    request = _request()
    script = ENGINE.format(marker=str(marker))
    request.agent_env["INVENTIV_AGENT_ENGINE_COMMAND"] = (
        f"{sys.executable} -c {shlex.quote(script)}"
    )
    try:
        created = await compute.create(request)
        for _ in range(100):  # agent, engine, and the engine's worker
            if len(machine_pids(request.instance_id)) >= 3:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"engine not started: {machine_pids(request.instance_id)}")
        await compute.delete(created.resource_id)
        assert marker.read_text() == "stopped cleanly"  # the agent's engine stop was awaited
        assert machine_pids(request.instance_id) == []  # the worker in its own group too
    finally:
        await compute.close()
