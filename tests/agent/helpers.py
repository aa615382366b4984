"""Starting the real agent (and through it the simulator) as processes, as the local provider does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from core.embedded import free_port

T = TypeVar("T")
SIM_COMMAND = f"{sys.executable} -m agent.sim"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    url: str
    engine_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def agent_env(tmp_path: Path, **settings: Any) -> dict[str, str]:
    """Environment for `python -m agent` running the simulator with fast timings."""
    values: dict[str, Any] = {
        "HOST": "127.0.0.1",
        "PORT": free_port(),
        "ENGINE_PORT": free_port(),
        "MODEL": "sim-model",
        "ENGINE_COMMAND": SIM_COMMAND,
        "ENGINE_ARGS": '{"model-load-delay-s": 0.3}',
        "RESTART_BACKOFF_S": 0.2,
        "HEARTBEAT_INTERVAL_S": 0.5,
        "ENGINE_STOP_TIMEOUT_S": 5,
    }
    values.update({key.upper(): value for key, value in settings.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_AGENT_")}
    env.update({f"INVENTIV_AGENT_{key}": str(value) for key, value in values.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@asynccontextmanager
async def running_agent(tmp_path: Path, **settings: Any) -> AsyncIterator[AgentProcess]:
    env = agent_env(tmp_path, **settings)
    log_path = tmp_path / f"agent-{env['INVENTIV_AGENT_PORT']}.log"
    process = spawn([sys.executable, "-m", "agent"], env, log_path)
    agent = AgentProcess(
        process=process,
        url=f"http://127.0.0.1:{env['INVENTIV_AGENT_PORT']}",
        engine_url=f"http://127.0.0.1:{env['INVENTIV_AGENT_ENGINE_PORT']}",
        log_path=log_path,
    )
    try:
        yield agent
    finally:
        stop_agent(agent)


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command,
            env=env,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_agent(agent: AgentProcess) -> None:
    """SIGTERM the agent alone (not its group): it must stop its engine itself."""
    if agent.process.poll() is None:
        agent.process.send_signal(signal.SIGTERM)
        try:
            agent.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.process.pid, signal.SIGKILL)
            agent.process.wait()


async def wait_for(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Polls `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def get_json(url: str) -> tuple[int, Any] | None:
    """(status, JSON body), or None when nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        # a zombie (exited, not yet reaped by its parent) no longer runs
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Runs an ASGI app with uvicorn on a free loopback port in this event loop; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest's
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: _started(server), 30, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _started(server: Any) -> bool:
    return bool(server.started)
