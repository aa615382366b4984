"""Token accounting that cannot be dodged, as a client sees it: concurrent requests cannot pass a
TPM limit together (their max_tokens are reserved at admission, across replicas), a client that
cuts a stream is charged for what it received, an error event inside a stream is an error that
counts toward ejection, a frozen Redis delays nobody beyond its timeout, and an engine refuses
whoever lacks its key while the gateway holds it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from core.embedded import free_port
from core.models import RequestLog
from core.settings import Settings
from core.tokens import engine_api_key
from core.wire import RoutableInstance
from gateway.settings import GatewaySettings
from tests.conftest import Stack
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, add_key, serving
from tests.gateway.test_api import wait_for
from tests.gateway.test_replicas import spawn_gateway  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def request_logs(sessionmaker: Any, count: int) -> list[RequestLog]:
    rows: list[RequestLog] = []
    for _ in range(200):
        async with sessionmaker() as session:
            rows = list((await session.exec(select(RequestLog).order_by(col(RequestLog.id)))).all())
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} request logs, expected {count}")


async def test_concurrent_requests_cannot_pass_a_token_limit_together_across_replicas(
    spawn_gateway: Callable[..., Any],  # noqa: F811
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
) -> None:
    engine = await engines.start("a")
    engine.behaviour.hold = asyncio.Event()  # admitted requests stay in flight: nothing settles
    await registry.put(registry.instance(engines.servers["a"].url))
    key, _ = await add_key(sessionmaker, seeded.project.id, tpm=1000)
    replicas = [await spawn_gateway(), await spawn_gateway()]
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        calls = [
            asyncio.create_task(
                client.post(
                    replicas[i % 2].url + "/v1/chat/completions", json={**CHAT, "max_tokens": 100}
                )
            )
            for i in range(50)
        ]
        # The refused answer at once; the admitted wait at the engine, their tokens reserved.
        await wait_for(lambda: sum(call.done() for call in calls) == 40, timeout=20)
        await asyncio.sleep(0.5)
        assert len(engine.requests) == 10  # 10 x 100 reserved tokens fill 1000
        refused = [call.result() for call in calls if call.done()]
        assert {r.status_code for r in refused} == {429}
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
        assert all(r.headers["x-ratelimit-limit-tokens"] == "1000" for r in refused)
        engine.behaviour.hold.set()
        answers = await asyncio.gather(*calls)
    assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 40


async def test_a_client_that_cuts_a_stream_is_charged_for_what_it_received(
    gateway: RunningGateway,
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
) -> None:
    engine = await engines.start("a")
    engine.behaviour.tokens = 200
    engine.behaviour.token_delay_s = 0.02
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    received = 0
    async with (
        gateway.client(seeded.api_key) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                received += 1
            if received == 20:
                break  # and leave: no usage chunk ever reaches the gateway
    [row] = await request_logs(sessionmaker, 1)
    assert row.status_code == 499
    # Charged for the chunks relayed (one token each): what it read, and at most the few
    # relayed while it was leaving; not 0, not the 200 it asked for.
    assert 20 <= row.output_tokens <= 30, row.output_tokens
    await wait_for(lambda: engine.active == 0)


async def test_an_error_inside_a_stream_is_an_error_and_counts_toward_ejection(
    start_gateway: Callable[[], Awaitable[RunningGateway]],
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
) -> None:
    gateway_settings.eject_after_failures = 2
    gateway_settings.eject_s = 30.0
    gateway = await start_gateway()
    failing = await engines.start("a")
    failing.behaviour.error_after = 1  # one token, then vLLM's in-band error event
    healthy = await engines.start("b")
    await registry.put(registry.instance(engines.servers["a"].url))
    await registry.put(registry.instance(engines.servers["b"].url))
    await wait_for(lambda: len(serving(gateway.app, MODEL)) == 2)
    async with gateway.client(seeded.api_key) as client:
        for _ in range(12):
            response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert response.status_code == 200  # the 200 had gone out before the error
        metrics = (await client.get("/metrics")).text
    assert len(failing.requests) == 2  # two in-band errors ejected it
    assert len(healthy.requests) == 10
    rows = await request_logs(sessionmaker, 12)
    assert sorted(r.status_code for r in rows) == [200] * 10 + [500] * 2
    assert f'inventiv_gateway_ejections_total{{model="{MODEL}"}} 1.0' in metrics
    assert (
        f'inventiv_gateway_upstream_errors_total{{kind="in_band",model="{MODEL}"}} 2.0' in metrics
    )


@pytest.fixture
def gateway_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    gateway_settings.redis_reply_timeout_s = 0.3
    return gateway_settings


async def test_a_frozen_redis_does_not_hang_rate_limited_requests(
    gateway: RunningGateway,
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
    stack: Stack,
) -> None:
    redis_server = stack.servers.get("redis")
    if redis_server is None:
        pytest.skip("Redis is an external server (its URL is set): it cannot be frozen")
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    key, _ = await add_key(sessionmaker, seeded.project.id, rpm=1000, tpm=100_000)
    async with gateway.client(key) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        with redis_server.paused():  # SIGSTOP; SIGCONT however the block ends
            took = []
            for _ in range(3):
                started = time.monotonic()
                response = await client.post("/v1/chat/completions", json=CHAT)
                took.append(time.monotonic() - started)
                # The rate limit fails open: inference goes on without it.
                assert response.status_code == 200, response.text
        assert max(took) < 0.3 + 1.5, took
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_an_engine_refuses_requests_without_its_key_and_the_gateway_holds_it(
    gateway: RunningGateway,
    seeded: Seeded,
    registry: Registry,
    settings: Settings,
) -> None:
    instance_id = str(uuid.uuid4())
    key = engine_api_key(settings.require("secret_key"), instance_id)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "agent.sim", "--model", MODEL, "--port", str(port),
            "--host", "127.0.0.1", "--default-max-tokens", "4", "--api-key", key,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as engine:
            for _ in range(300):
                try:
                    if (await engine.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            # A stranger reaching the engine: vLLM's answer without the key, or with another.
            for headers in ({}, {"Authorization": "Bearer guessed"}):
                for path in ("/v1/models", "/v1/chat/completions"):
                    refused = await engine.request(
                        "GET" if path == "/v1/models" else "POST",
                        path,
                        json=None if path == "/v1/models" else CHAT,
                        headers=headers,
                    )
                    assert refused.status_code == 401, refused.text
                    assert refused.json() == {"error": "Unauthorized"}
            assert (await engine.get("/health")).status_code == 200  # probes need no key
        await registry.put(
            RoutableInstance(
                instance_id=instance_id,
                deployment_id=str(seeded.deployment.id),
                project_id=str(seeded.project.id),
                model=MODEL,
                engine_url=url,
            )
        )
        await wait_for(lambda: serving(gateway.app, MODEL))
        async with gateway.client(seeded.api_key) as client:
            for stream in (False, True):
                response = await client.post(
                    "/v1/chat/completions", json={**CHAT, "stream": stream}
                )
                assert response.status_code == 200, response.text
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def test_settlements_of_many_keys_land_on_each_key(redis_url: str, redis_client: Any) -> None:
    """The token settlements a flush sends for 1,200 keys (three script calls of at most 500)
    each reach their own key's window, in both of the limiter's Redis clients."""
    import redis.asyncio as aioredis

    from core.redis_keys import rate_limit_key
    from gateway.ratelimit import WINDOW_S, RateLimiter

    for pipelined in (True, False):
        fallback = aioredis.Redis.from_url(redis_url)
        # A URL the pipelined client does not take leaves the limiter on redis-py.
        limiter = RateLimiter(redis_url if pipelined else "rediss://nowhere:1", fallback)
        second = int((await redis_client.time())[0])
        keys = [str(uuid.uuid4()) for _ in range(1200)]
        nothing = str(uuid.uuid4())
        await limiter.settle_many(
            [(key, second, index + 1, index + 1) for index, key in enumerate(keys)]
            + [(nothing, second, 0, 0)]  # nothing to settle: sent nowhere
        )
        for index in (0, 1, 499, 500, 999, 1000, 1199):
            key = rate_limit_key(keys[index], "tpm", WINDOW_S)
            assert int(await redis_client.hget(key, str(second)) or 0) == index + 1
            assert 0 < await redis_client.ttl(key) <= 2 * WINDOW_S
        assert not await redis_client.exists(rate_limit_key(nothing, "tpm", WINDOW_S))
        limiter.close()
        await fallback.aclose()
