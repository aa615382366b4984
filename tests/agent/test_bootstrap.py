"""bootstrap.sh installs the agent from a bundle, verifies WORKER_AGENT_SHA256, and starts it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from fastapi import FastAPI, Response

from agent.identity import bundle
from tests.agent.helpers import REPO_ROOT, agent_env, get_json, pid_alive, serving, wait_for

BOOTSTRAP = REPO_ROOT / "agent" / "bootstrap.sh"


def agent_sha256() -> str:
    return hashlib.sha256((REPO_ROOT / "agent" / "agent.py").read_bytes()).hexdigest()


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
    assert "agent checksum verified" in result.stderr
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
