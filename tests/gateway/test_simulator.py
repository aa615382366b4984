"""The gateway in front of the vLLM simulator (agent/sim), the engine the platform runs in dev:
responses, streams and usage accounting as vLLM shapes them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlmodel import col, select

from core.embedded import free_port
from core.models import RequestLog
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Registry, RunningGateway, serving
from tests.gateway.test_api import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "agent.sim",
            "--model", MODEL, "--port", str(port), "--host", "127.0.0.1",
            "--inter-token-latency-s", "0.01", "--prefill-overhead-s", "0.01",
            "--default-max-tokens", "8",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(url + "/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def test_simulator_through_the_gateway(
    gateway: RunningGateway,
    seeded: Seeded,
    registry: Registry,
    simulator: str,
    sessionmaker,  # type: ignore[no-untyped-def]
) -> None:
    await registry.put(registry.instance(simulator))
    await wait_for(lambda: serving(gateway.app, MODEL))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)

    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=5
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 5

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=6, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)  # the usage chunk the gateway added is gone
    assert "".join(c.choices[0].delta.content or "" for c in chunks)

    rows: list[RequestLog] = []
    for _ in range(100):
        async with sessionmaker() as session:
            rows = list((await session.exec(select(RequestLog).order_by(col(RequestLog.id)))).all())
        if len(rows) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(r.streamed, r.output_tokens) for r in rows] == [(False, 5), (True, 6)]
    assert all(r.input_tokens > 0 for r in rows)
