"""The agent as the local provider runs it: `python -m agent` supervising the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import agent.agent as agent_module
from agent.identity import bundled_agent, manifest
from tests.agent.helpers import (
    agent_env,
    get_json,
    pid_alive,
    running_agent,
    stop_agent,
    wait_for,
)


async def test_info_checksum_is_the_bundle_manifests_sha256(tmp_path: Path) -> None:
    expected = hashlib.sha256(manifest().encode()).hexdigest()
    assert bundled_agent().checksum == expected
    assert "  agent/agent.py\n" in manifest() and "  agent/supervisor.py\n" in manifest()
    async with running_agent(tmp_path) as agent:
        status, info = await wait_for(lambda: get_json(f"{agent.url}/info"), 20, "/info")
    assert status == 200
    assert info["checksum"] == expected
    assert info["version"] == agent_module.AGENT_VERSION
    assert info["build_date"] == agent_module.AGENT_BUILD_DATE
    assert info["model"] == info["served_name"] == "sim-model"
    assert info["gpus"] is None  # no NVIDIA GPU on this machine: absent, not zeros


async def test_readiness_flips_only_once_the_model_is_loaded(tmp_path: Path) -> None:
    async with running_agent(tmp_path, engine_args='{"model-load-delay-s": 1.5}') as agent:
        status, _ = await wait_for(lambda: get_json(f"{agent.url}/healthz"), 20, "liveness")
        assert status == 200
        seen: list[tuple[int, str]] = []

        async def ready() -> bool:
            answer = await get_json(f"{agent.url}/readyz")
            if answer is not None:
                seen.append((answer[0], answer[1]["reason"]))
            return answer is not None and answer[0] == 200

        await wait_for(ready, 30, "readiness")
        # the engine was still loading when the agent already answered
        assert seen[0][0] == 503 and "not answering" in seen[0][1]
        models = await get_json(f"{agent.engine_url}/v1/models")
        assert models is not None and models[1]["data"][0]["id"] == "sim-model"


async def test_a_killed_engine_is_restarted_and_reported(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as agent:
        await wait_for(lambda: _ready(agent.url), 30, "readiness")
        _, info = await get_json(f"{agent.url}/info") or (0, {})
        first_pid = info["engine"]["pid"]
        os.kill(first_pid, signal.SIGKILL)

        async def restarted() -> dict | None:
            answer = await get_json(f"{agent.url}/info")
            body = answer[1] if answer else None
            return body if body and body["engine_restarts"] == 1 else None

        info = await wait_for(restarted, 30, "the restart to be reported")
        assert info["engine"]["last_exit_code"] == -signal.SIGKILL
        await wait_for(lambda: _ready(agent.url), 30, "readiness after the restart")
        _, info = await get_json(f"{agent.url}/info") or (0, {})
        assert info["engine"]["pid"] != first_pid and info["engine"]["state"] == "running"
        assert "restart 1" in agent.log()


async def test_an_engine_that_keeps_dying_is_reported_as_a_crash_loop(tmp_path: Path) -> None:
    crashing = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    async with running_agent(
        tmp_path, engine_command=crashing, crash_loop_threshold=3, restart_backoff_s=0.05
    ) as agent:

        async def crash_loop() -> dict | None:
            answer = await get_json(f"{agent.url}/info")
            body = answer[1] if answer else None
            return body if body and body["engine"]["crash_loop"] else None

        info = await wait_for(crash_loop, 30, "a crash loop")
        assert info["engine_restarts"] >= 3 and info["engine"]["last_exit_code"] == 3
        status, body = await get_json(f"{agent.url}/readyz") or (0, {})
        assert status == 503 and body["engine_state"] in ("crash_loop", "starting")


async def test_very_long_engine_log_lines_do_not_stop_supervision(tmp_path: Path) -> None:
    chatty = f"{sys.executable} -c 'print(\"x\" * 300000, flush=True); raise SystemExit(5)'"
    async with running_agent(tmp_path, engine_command=chatty, restart_backoff_s=0.05) as agent:

        async def restarted() -> dict | None:
            answer = await get_json(f"{agent.url}/info")
            body = answer[1] if answer else None
            return body if body and body["engine_restarts"] >= 2 else None

        info = await wait_for(restarted, 30, "the engine to be restarted")
        assert info["engine"]["last_exit_code"] == 5
        assert "x" * 60000 in agent.log()


async def test_the_engine_does_not_inherit_the_agents_token(tmp_path: Path) -> None:
    """The engine gets its own secrets under vLLM's names (HF_TOKEN, VLLM_API_KEY), none of the
    agent's, and none of them is printed."""
    show_env = (
        f"{sys.executable} -c 'import os; "
        'print("ENV:", sorted(k for k in os.environ if "TOKEN" in k or "KEY" in k), flush=True)\''
    )
    async with running_agent(
        tmp_path,
        engine_command=show_env,
        token="heartbeat-secret",
        hf_token="hub-secret",
        engine_api_key="engine-secret",
    ) as agent:
        await wait_for(
            lambda: _logged(agent.log(), "agent.engine: ENV:"), 20, "the engine's output"
        )
        line = next(line for line in agent.log().splitlines() if "agent.engine: ENV:" in line)
    assert "'HF_TOKEN'" in line and "INVENTIV_AGENT_TOKEN" not in line
    assert "INVENTIV_AGENT_HF_TOKEN" not in line
    assert "'VLLM_API_KEY'" in line and "INVENTIV_AGENT_ENGINE_API_KEY" not in line
    for secret in ("heartbeat-secret", "hub-secret", "engine-secret"):
        assert secret not in agent.log()


async def _logged(log: str, text: str) -> bool:
    return text in log


async def test_an_engine_answering_unlike_vllm_is_not_ready_and_reports_no_load(
    tmp_path: Path,
) -> None:
    odd = f"{sys.executable} {Path(__file__).parent / 'odd_engine.py'}"
    async with running_agent(tmp_path, engine_command=odd) as agent:

        async def answered() -> tuple[int, dict] | None:
            answer = await get_json(f"{agent.url}/readyz")
            return answer if answer and "model list" in answer[1]["reason"] else None

        status, _ = await wait_for(answered, 20, "the odd engine to answer")
        assert status == 503
        status, load = await get_json(f"{agent.url}/load") or (0, {})
        assert status == 200 and load["engine_metrics_read"] is False and load["in_flight"] == 0


async def test_stopping_the_agent_stops_its_engine(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as agent:
        await wait_for(lambda: _ready(agent.url), 30, "readiness")
        _, info = await get_json(f"{agent.url}/info") or (0, {})
        engine_pid = info["engine"]["pid"]
        assert pid_alive(engine_pid)
        await asyncio.to_thread(stop_agent, agent)
        # uvicorn re-raises the SIGTERM it caught once shutdown is complete
        assert agent.process.returncode in (0, -signal.SIGTERM)
        assert "stopping engine" in agent.log()
        await wait_for(lambda: _gone(engine_pid), 10, "the engine to be gone")


async def test_load_reports_requests_in_flight_until_they_finish(tmp_path: Path) -> None:
    slow_engine = '{"model-load-delay-s": 0.3, "inter-token-latency-s": 0.05, "max-num-seqs": 2}'
    async with running_agent(tmp_path, engine_args=slow_engine) as agent:
        await wait_for(lambda: _ready(agent.url), 30, "readiness")
        async with httpx.AsyncClient(base_url=agent.engine_url, timeout=60) as client:
            requests = [
                asyncio.create_task(
                    client.post(
                        "/v1/completions",
                        json={"model": "sim-model", "prompt": "hello", "max_tokens": 20},
                    )
                )
                for _ in range(4)
            ]

            async def busy() -> dict | None:
                # The engine admits queued requests at its next step: wait for a settled view.
                _, load = await get_json(f"{agent.url}/load") or (0, {})
                settled = load.get("requests_running") == 2 and load.get("requests_waiting") == 2
                return load if settled else None

            load = await wait_for(busy, 20, "two running and two queued requests to show")
            assert load["in_flight"] == 4
            assert all(r.status_code == 200 for r in await asyncio.gather(*requests))
        _, load = await get_json(f"{agent.url}/load") or (0, {})
        assert load["in_flight"] == 0 and load["engine_metrics_read"] is True


@pytest.mark.parametrize(
    "legacy", [False, True], ids=["kv_cache_usage_perc", "gpu_cache_usage_perc"]
)
async def test_kv_cache_usage_is_read_under_both_vllm_names(tmp_path: Path, legacy: bool) -> None:
    engine = {"model-load-delay-s": 0.3, "kv-cache-tokens": 4096, "inter-token-latency-s": 0.05}
    if legacy:
        engine["legacy-kv-metric"] = True
    async with running_agent(tmp_path, engine_args=json.dumps(engine)) as agent:
        await wait_for(lambda: _ready(agent.url), 30, "readiness")
        async with httpx.AsyncClient(base_url=agent.engine_url, timeout=60) as client:
            long_prompt = "word " * 1500
            request = asyncio.create_task(
                client.post(
                    "/v1/completions",
                    json={"model": "sim-model", "prompt": long_prompt, "max_tokens": 40},
                )
            )

            async def kv_used() -> float | None:
                _, load = await get_json(f"{agent.url}/load") or (0, {})
                return load.get("kv_cache_usage") or None

            usage = await wait_for(kv_used, 20, "KV usage to rise")
            assert usage > 0.3
            assert (await request).status_code == 200
        metrics = await _text(f"{agent.url}/metrics")
        assert "inventiv_agent_engine_ready 1.0" in metrics
        assert "inventiv_agent_engine_prompt_tokens 1500.0" in metrics
        assert "inventiv_agent_engine_ttft_seconds_count 1.0" in metrics
        assert f'checksum="{bundled_agent().checksum}"' in metrics


async def _ready(url: str) -> bool:
    answer = await get_json(f"{url}/readyz")
    return answer is not None and answer[0] == 200


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)


async def _text(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).text


async def test_bad_settings_name_the_variable_and_never_echo_values(tmp_path: Path) -> None:
    env = agent_env(tmp_path, engine_args="{not json", token="s3cr3t-token")
    env["INVENTIV_AGENT_MAX_NUM_SEQS"] = "s3cr3t-token"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "INVENTIV_AGENT_ENGINE_ARGS" in result.stderr
    env["INVENTIV_AGENT_ENGINE_ARGS"] = "{}"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "INVENTIV_AGENT_MAX_NUM_SEQS" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


async def test_info_and_load_need_the_instance_token(tmp_path: Path) -> None:
    async with running_agent(tmp_path, token="instance-token-123") as agent:
        await wait_for(lambda: get_json(f"{agent.url}/healthz"), 20, "liveness")
        async with httpx.AsyncClient(base_url=agent.url, timeout=5) as client:
            for path in ("/info", "/load"):
                for headers in ({}, {"Authorization": "Bearer someone-else"}):
                    refused = await client.get(path, headers=headers)
                    assert refused.status_code == 401, (path, refused.text)
                allowed = await client.get(
                    path, headers={"Authorization": "Bearer instance-token-123"}
                )
                assert allowed.status_code == 200, (path, allowed.text)
            assert (await client.get("/healthz")).status_code == 200  # liveness stays open
