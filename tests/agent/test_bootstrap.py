"""bootstrap.sh installs the agent from a bundle, verifies WORKER_AGENT_SHA256 (the checksum of
every bundled file) before running anything, and starts it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from fastapi import FastAPI, Response

from agent.identity import bundle, bundled_agent
from tests.agent.helpers import REPO_ROOT, agent_env, get_json, pid_alive, serving, wait_for

BOOTSTRAP = REPO_ROOT / "agent" / "bootstrap.sh"


def agent_sha256() -> str:
    return bundled_agent().checksum


def run_bootstrap(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def bootstrap_env(tmp_path: Path, **worker: str) -> dict[str, str]:
    env = agent_env(tmp_path)
    env.pop("PYTHONPATH")  # the bundle must be enough
    env.update(
        WORKER_INSTALL_DIR=str(tmp_path / "opt"),
        WORKER_PYTHON=sys.executable,
        WORKER_AGENT_PIP="0",
        WORKER_AGENT_START_TIMEOUT_S="30",
        **worker,
    )
    return env


async def test_a_wrong_checksum_refuses_to_start(tmp_path: Path) -> None:
    tarball = await asyncio.to_thread(bundle, tmp_path / "agent.tar.gz")
    env = bootstrap_env(tmp_path, WORKER_AGENT_TARBALL=str(tarball), WORKER_AGENT_SHA256="0" * 64)
    result = await asyncio.to_thread(run_bootstrap, env)
    assert result.returncode == 3
    assert "refusing to start" in result.stderr and agent_sha256() in result.stderr
    assert not (tmp_path / "opt" / "agent.pid").exists()
    agent_url = f"http://127.0.0.1:{env['INVENTIV_AGENT_PORT']}"
    assert await get_json(f"{agent_url}/healthz") is None


def tampered(tarball: Path, output: Path, name: str, data: bytes | None) -> Path:
    """The bundle with one member replaced (or, data None, removed), or a file added."""
    with tarfile.open(tarball) as original, tarfile.open(output, "w:gz") as copy:
        members = {m.name: m for m in original.getmembers()}
        for member in members.values():
            if member.name == name:
                continue
            copy.addfile(member, original.extractfile(member))
        if data is not None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            copy.addfile(info, io.BytesIO(data))
    return output


async def test_a_bundle_with_a_modified_supervisor_is_refused(tmp_path: Path) -> None:
    """Not only agent/agent.py: a change to any bundled file, the manifest matching the expected
    checksum or not, and an added file the interpreter would load first, are all refused."""
    tarball = await asyncio.to_thread(bundle, tmp_path / "agent.tar.gz")
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("agent/supervisor.py")
        assert member is not None
        source = member.read()
    evil = source + b"\nprint('tampered')\n"
    cases = {
        "modified supervisor": ("agent/supervisor.py", evil),
        "added sitecustomize": ("sitecustomize.py", b"print('first')\n"),
        "planted bytecode": ("agent/__pycache__/supervisor.cpython-311.pyc", b"\0" * 16),
    }
    for case, (name, data) in cases.items():
        bad = tampered(tarball, tmp_path / f"{case}.tar.gz", name, data)
        env = bootstrap_env(
            tmp_path, WORKER_AGENT_TARBALL=str(bad), WORKER_AGENT_SHA256=agent_sha256()
        )
        result = await asyncio.to_thread(run_bootstrap, env)
        assert result.returncode == 3, (case, result.stderr)
        assert "refusing to start" in result.stderr, case
        # the bundle's manifest is still the expected one: bootstrap names the file that differs
        assert f"differ from the bundle's manifest: {name})" in result.stderr, result.stderr
        assert not (tmp_path / "opt" / "agent.pid").exists(), case
        agent_url = f"http://127.0.0.1:{env['INVENTIV_AGENT_PORT']}"
        assert await get_json(f"{agent_url}/healthz") is None, case


async def test_the_bundle_is_reproducible_and_its_checksum_is_its_manifests(tmp_path: Path) -> None:
    first = await asyncio.to_thread(bundle, tmp_path / "one.tar.gz")
    second = await asyncio.to_thread(bundle, tmp_path / "two.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as archive:
        names = archive.getnames()
        assert names == [*sorted(names[:-1]), "MANIFEST.sha256"]
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in archive.getmembers()} == {
            (946684800, 0, 0, "")
        }
        listed = archive.extractfile("MANIFEST.sha256")
        assert listed is not None
        manifest = listed.read()
        for line in manifest.decode().splitlines():
            digest, name = line.split("  ", 1)
            member = archive.extractfile(name)
            assert member is not None and hashlib.sha256(member.read()).hexdigest() == digest
    assert [line.split("  ", 1)[1] for line in manifest.decode().splitlines()] == names[:-1]
    assert hashlib.sha256(manifest).hexdigest() == agent_sha256()


async def test_a_downloaded_verified_agent_starts(tmp_path: Path) -> None:
    tarball = await asyncio.to_thread(bundle, tmp_path / "agent.tar.gz")
    payload = await asyncio.to_thread(tarball.read_bytes)
    bundle_server = FastAPI()

    @bundle_server.get("/agent.tar.gz")
    async def download() -> Response:
        return Response(payload, media_type="application/gzip")

    async with serving(bundle_server) as url:
        env = bootstrap_env(
            tmp_path, WORKER_AGENT_URL=f"{url}/agent.tar.gz", WORKER_AGENT_SHA256=agent_sha256()
        )
        result = await asyncio.to_thread(run_bootstrap, env)
    assert result.returncode == 0, result.stderr
    assert "agent bundle checksum verified" in result.stderr
    pid = int((tmp_path / "opt" / "agent.pid").read_text())
    try:
        agent_url = f"http://127.0.0.1:{env['INVENTIV_AGENT_PORT']}"
        status, info = await get_json(f"{agent_url}/info") or (0, {})
        assert status == 200 and info["checksum"] == agent_sha256()

        async def ready() -> bool:
            answer = await get_json(f"{agent_url}/readyz")
            return answer is not None and answer[0] == 200

        await wait_for(ready, 30, "the bootstrapped agent's engine")
    finally:
        os.kill(pid, signal.SIGTERM)
        await wait_for(lambda: _gone(pid), 20, "the agent to stop")


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)


async def test_the_bundle_imports_nothing_else_from_the_control_plane(tmp_path: Path) -> None:
    tarball = await asyncio.to_thread(bundle, tmp_path / "agent.tar.gz")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tarball) as archive:
        archive.extractall(unpacked, filter="data")
    probe = (
        "import json, sys; import agent.__main__, agent.sim.__main__, agent.version_tool; "
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items() "
        "if n.split('.')[0] in ('core', 'api', 'gateway', 'workers', 'activities', "
        "'workflows', 'inventiv', 'agent')}))"
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=True,
    )
    modules = json.loads(result.stdout)
    assert {name for name in modules if not name.startswith("agent")} == {"core", "core.wire"}
    assert all(path.startswith(str(unpacked)) for path in modules.values() if path)


async def test_systemd_mode_installs_a_unit_with_the_agents_environment(tmp_path: Path) -> None:
    """systemctl is replaced by a recorder: the unit file and its environment are what matter."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "systemctl-calls"
    (fake_bin / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (fake_bin / "systemctl").chmod(0o755)
    tarball = await asyncio.to_thread(bundle, tmp_path / "agent.tar.gz")
    env = bootstrap_env(
        tmp_path,
        WORKER_AGENT_TARBALL=str(tarball),
        WORKER_AGENT_SHA256=agent_sha256(),
        WORKER_AGENT_MODE="systemd",
        WORKER_SYSTEMD_DIR=str(tmp_path / "units"),
        VLLM_WORKER_MULTIPROC_METHOD="spawn",
        INVENTIV_AGENT_TOKEN='tok"en',
        PATH=f"{fake_bin}:{os.environ['PATH']}",
    )
    result = await asyncio.to_thread(run_bootstrap, env)
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "units" / "inventiv-agent.service").read_text()
    assert f"ExecStart={sys.executable} -m agent" in unit and "Restart=always" in unit
    env_file = tmp_path / "opt" / "agent.env"
    assert f"EnvironmentFile={env_file}" in unit
    lines = env_file.read_text().splitlines()
    assert 'INVENTIV_AGENT_TOKEN="tok\\"en"' in lines
    assert 'VLLM_WORKER_MULTIPROC_METHOD="spawn"' in lines
    assert 'INVENTIV_AGENT_ENGINE_HOST="0.0.0.0"' in lines  # the gateway reaches the engine
    assert f'PYTHONPATH="{tmp_path / "opt" / "agent-src"}"' in lines
    assert not any(line.startswith(("PATH=", "WORKER_")) for line in lines)
    assert env_file.stat().st_mode & 0o077 == 0  # it holds the token: owner only
    assert calls.read_text().splitlines() == [
        "daemon-reload",
        "enable inventiv-agent.service",
        "restart inventiv-agent.service",
    ]
