"""Real vLLM (CPU build) under the real agent, through the real gateway, read with the official
`openai` client. One engine start per session (tests/engine/conftest.py); the crash test, which
makes the agent start it again, comes last."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from agent.engine_metrics import (
    GENERATION_TOKENS,
    KV_USAGE_NAMES,
    PROMPT_TOKENS,
    RUNNING,
    TTFT_COUNT,
    WAITING,
)
from core.models import RequestLog
from tests.agent.helpers import get_json
from tests.engine.conftest import (
    ENGINE_INSTANCE_ID,
    ENGINE_KEY,
    SERVED,
    RealEngine,
    wait_ready,
)
from tests.factories import Seeded
from tests.gateway.conftest import Registry, RunningGateway, serving


async def routed(gateway: RunningGateway, registry: Registry, engine: RealEngine) -> None:
    instance = registry.instance(engine.url).model_copy(update={"instance_id": ENGINE_INSTANCE_ID})
    await registry.put(instance)
    for _ in range(200):
        if serving(gateway.app, SERVED):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never routed the model")


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Metric sample name -> the label sets it has."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


async def test_the_agent_reads_the_real_engine(
    real_engine: RealEngine, engine_http: httpx.AsyncClient
) -> None:
    status, ready = await get_json(f"{real_engine.agent.url}/readyz") or (0, {})
    assert status == 200 and ready["engine_state"] == "running", ready
    # Real vLLM under its per-instance key (VLLM_API_KEY from the agent): a stranger who reaches
    # the port gets 401 on /v1, as does a wrong key; the agent's probes carried the right one.
    body = {"model": SERVED, "prompt": "hello there", "max_tokens": 16}
    async with httpx.AsyncClient(base_url=real_engine.url, timeout=30) as stranger:
        assert (await stranger.post("/v1/completions", json=body)).status_code == 401
        assert (await stranger.get("/v1/models")).status_code == 401
        wrong = {"Authorization": "Bearer " + ENGINE_KEY[::-1]}
        assert (await stranger.get("/v1/models", headers=wrong)).status_code == 401
        assert (await stranger.get("/health")).status_code == 200
    start = time.monotonic()
    first = await engine_http.post("/v1/completions", json=body)
    print(f"\nfirst completion (16 tokens) in {(time.monotonic() - start) * 1000:.0f} ms")
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 16

    metrics = samples((await engine_http.get("/metrics")).text)
    read_by_the_agent = [RUNNING, WAITING, PROMPT_TOKENS, GENERATION_TOKENS, TTFT_COUNT]
    for name in [*read_by_the_agent, KV_USAGE_NAMES[0]]:
        assert name in metrics, name
        assert all({"engine", "model_name"} <= set(labels) for labels in metrics[name]), name
        assert {labels["model_name"] for labels in metrics[name]} == {SERVED}
    assert "vllm:inter_token_latency_seconds_count" in metrics
    assert "vllm:time_per_output_token_seconds_count" not in metrics  # gone in vLLM 0.32

    status, load = await get_json(f"{real_engine.agent.url}/load") or (0, {})
    assert status == 200 and load["engine_metrics_read"] is True, load
    assert load["requests_running"] == 0 and load["requests_waiting"] == 0
    assert load["prompt_tokens_total"] >= 2 and load["generation_tokens_total"] >= 16
    assert load["ttft_seconds_count"] >= 1 and 0 <= load["kv_cache_usage"] <= 1
    async with httpx.AsyncClient() as http:
        agent_metrics = samples((await http.get(f"{real_engine.agent.url}/metrics")).text)
    assert "inventiv_agent_engine_ready" in agent_metrics


async def test_chat_and_streams_through_the_gateway(
    gateway: RunningGateway,
    seeded: Seeded,
    registry: Registry,
    real_engine: RealEngine,
    sessionmaker,  # type: ignore[no-untyped-def]
) -> None:
    await routed(gateway, registry, real_engine)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)

    chat = await client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Say hello"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    assert chat.usage.prompt_tokens > 0

    stream = await client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"

    completion = await client.completions.create(
        model=SERVED, prompt="once upon a time", max_tokens=4, stream=True
    )
    pieces = [piece async for piece in completion]
    assert pieces[-1].choices[0].finish_reason == "length"

    rows: list[RequestLog] = []
    for _ in range(100):
        async with sessionmaker() as session:
            rows = list((await session.exec(select(RequestLog).order_by(col(RequestLog.id)))).all())
        if len(rows) == 3:
            break
        await asyncio.sleep(0.05)
    assert [(r.streamed, r.output_tokens) for r in rows] == [(False, 5), (True, 6), (True, 4)]
    assert rows[0].input_tokens == chat.usage.prompt_tokens


async def test_the_engines_errors_pass_through_the_gateway(
    gateway: RunningGateway, seeded: Seeded, registry: Registry, real_engine: RealEngine
) -> None:
    await routed(gateway, registry, real_engine)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024") as long:
        await client.completions.create(model=SERVED, prompt="word " * 1100, max_tokens=1)
    assert isinstance(long.value.body, dict) and long.value.body["param"] == "input_tokens"
    with pytest.raises(openai.BadRequestError, match="only be defined when `stream=True`"):
        await client.completions.create(
            model=SERVED, prompt="x", max_tokens=1, stream_options={"include_usage": True}
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        await client.completions.create(model=SERVED, prompt="x", max_tokens=-3)


async def test_a_crashed_engine_is_restarted_and_served_again(
    gateway: RunningGateway, seeded: Seeded, registry: Registry, real_engine: RealEngine
) -> None:
    await routed(gateway, registry, real_engine)
    status, info = await get_json(f"{real_engine.agent.url}/info") or (0, {})
    assert status == 200 and info["engine"]["pid"], info
    restarts = info["engine_restarts"]
    os.killpg(info["engine"]["pid"], signal.SIGKILL)  # the engine and its engine-core process

    async def restarted() -> bool:
        answer = await get_json(f"{real_engine.agent.url}/info")
        return answer is not None and answer[1]["engine_restarts"] > restarts

    for _ in range(300):
        if await restarted():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the agent did not notice the engine's death")
    took = await asyncio.to_thread(wait_ready, real_engine.agent, 420)
    print(f"\nreal vLLM restarted by the agent and ready again in {took:.1f}s")

    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key, max_retries=0)
    deadline = time.monotonic() + 30
    while True:  # the gateway may have ejected the instance while it was down
        try:
            chat = await client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": "again"}], max_tokens=3
            )
            break
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    assert chat.usage is not None and chat.usage.completion_tokens == 3
