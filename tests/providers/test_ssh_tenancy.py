"""Bare-metal tenancy against the real SSH server on loopback: an instance runs as a Unix user
of its own, and its termination removes what that user could leave for the host's next tenant
(processes outside the agent's groups, files in /tmp and /dev/shm, SysV IPC, its home, the user)
before the host is released; a host whose GPUs still run something is kept.

The per-instance users are real: this needs root or passwordless sudo here, as on a host. The
tenant runs the agent with the system's Python and this virtual environment's packages (the
test's own interpreter may sit where another user cannot read)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from activities.providers.base import ResourceNotYetGoneError
from activities.providers.ssh.adapter import SSHCompute, tenant_user
from activities.providers.ssh.settings import SSHSettings
from agent.identity import bundled_agent
from tests.providers.conftest import SSHHost
from tests.providers.test_ssh import Sessions, _request, claimed_by, healthz, register


def _can_make_users() -> str | None:
    """Why per-instance users cannot be made here, or None."""
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], check=False).returncode:
        return "needs root or passwordless sudo"
    missing = [t for t in ("useradd", "userdel", "runuser", "pkill") if not shutil.which(t)]
    return f"no {', '.join(missing)} here" if missing else None


needs_users = pytest.mark.skipif(_can_make_users() is not None, reason=str(_can_make_users()))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users may enter (pytest's own are owner-only)."""
    path = Path(tempfile.mkdtemp(prefix="inventiv-tenancy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tenant_python(shared_dir: Path) -> str:
    """An interpreter any user can run, with the agent's requirements importable."""
    system = Path("/usr/bin/python3")
    packages = sysconfig.get_paths()["purelib"]
    version = f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
    probe = subprocess.run(
        [str(system), "-c", f"{version}; import fastapi, uvicorn, psutil, orjson"],
        env={"PYTHONPATH": packages},
        check=False,
        capture_output=True,
    )
    if not system.exists() or probe.returncode != 0:
        pytest.skip("no system Python of this version that can use this environment's packages")
    wrapper = shared_dir / "python"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{packages}" exec {system} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def as_user(user: str, script: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script], check=True, timeout=30)


def uid_processes(uid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "uids", "status"]):
        if proc.info["uids"] and proc.info["uids"].real == uid:
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.info["pid"])
    return found


def remove_user(user: str) -> None:
    """After a failed test: nothing of the test's user may stay on this machine."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)
    subprocess.run(["userdel", "-r", "-f", user], check=False, capture_output=True)


@needs_users
async def test_each_instance_runs_as_a_user_of_its_own_and_leaves_nothing(
    db_url: str, sessionmaker: Sessions, ssh_host: SSHHost, shared_dir: Path, tenant_python: str
) -> None:
    homes = shared_dir / "homes"
    homes.mkdir(mode=0o755)
    host = await register(sessionmaker, ssh_host, python=tenant_python)
    compute = SSHCompute(SSHSettings(enabled=True, tenant_home_dir=str(homes)), db_url)
    request = _request()
    user = tenant_user(request.instance_id)
    try:
        created = await compute.create(request)
        assert await healthz(created.agent_url or "") == 200
        async with httpx.AsyncClient() as client:
            token = {"Authorization": "Bearer tok-secret"}  # the instance's own, from _request
            info = (await client.get(f"{created.agent_url}/info", headers=token)).json()
        assert info.get("checksum") == bundled_agent().checksum, info
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        assert home == homes / user and home.stat().st_uid == entry.pw_uid
        assert home.stat().st_mode & 0o077 == 0  # the tenant's home: its own
        assert entry.pw_shell.endswith(("nologin", "false"))  # no login through it
        assert (home / "agent.env").stat().st_uid == entry.pw_uid
        assert (home / "agent.env").stat().st_mode & 0o777 == 0o600
        agent_pid = int((home / "agent.pid").read_text())
        assert psutil.Process(agent_pid).uids().real == entry.pw_uid
        # The tenant's own processes and leftovers, as code run by its engine could make them.
        mark = f"inventiv-test-{uuid.uuid4().hex[:8]}"
        as_user(
            user,
            f"echo x > /tmp/{mark}; echo x > /dev/shm/{mark}; "
            "setsid sleep 600 >/dev/null 2>&1 </dev/null & "
            + ("ipcmk -M 4096 >/dev/null; " if shutil.which("ipcmk") else ""),
        )
        assert len(uid_processes(entry.pw_uid)) >= 3  # agent, engine, the escaped sleep
        await compute.delete(created.resource_id)

        with pytest.raises(KeyError):
            pwd.getpwnam(user)
        assert uid_processes(entry.pw_uid) == []
        assert not home.exists()
        assert not Path(f"/tmp/{mark}").exists() and not Path(f"/dev/shm/{mark}").exists()
        segments = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        assert [s for s in segments if s.split()[7] == str(entry.pw_uid)] == []
        assert await healthz(created.agent_url or "") is None
        assert await claimed_by(sessionmaker, host) is None
        assert not (ssh_host.home / ".inventiv" / request.instance_id).exists()
        await compute.delete(created.resource_id)  # idempotent
    finally:
        await compute.close()
        await asyncio.to_thread(remove_user, user)


FAKE_NVIDIA_SMI = """#!/bin/sh
# nvidia-smi --query-compute-apps=...: one line per compute process while {busy} exists
[ -f {busy} ] && echo "4242, python3, 30000 MiB"
exit 0
"""


async def test_a_host_whose_gpus_still_run_something_is_kept(
    db_url: str,
    sessionmaker: Sessions,
    ssh_host: SSHHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked before the host is handed on, in every mode (here as the SSH user)."""
    busy = tmp_path / "gpu-busy"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text(FAKE_NVIDIA_SMI.format(busy=busy))
    (fake_bin / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")  # the SSH server's commands
    host = await register(sessionmaker, ssh_host)
    compute = SSHCompute(SSHSettings(enabled=True, tenant_users=False), db_url)
    request = _request()
    try:
        created = await compute.create(request)
        busy.write_text("")
        with pytest.raises(ResourceNotYetGoneError, match="GPUs still run 4242, python3"):
            await compute.delete(created.resource_id)
        assert await claimed_by(sessionmaker, host) == uuid.UUID(request.instance_id)
        assert await compute.get(created.resource_id) is not None  # so teardown retries
        busy.unlink()
        await compute.delete(created.resource_id)
        assert await claimed_by(sessionmaker, host) is None
        assert await compute.get(created.resource_id) is None
    finally:
        await compute.close()
