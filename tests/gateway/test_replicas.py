"""Two gateway processes (`python -m gateway`) sharing Redis and PostgreSQL: key revocation
reaches both, rate limits are exact across both, and a graceful stop flushes request logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, update
from sqlmodel import select

from core.embedded import free_port
from core.models import ApiKey, RequestLog
from core.redis_keys import API_KEY_CHANNEL, rate_limit_key
from core.settings import Settings
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, add_key, serving
from tests.gateway.test_api import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
async def spawn_gateway(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[..., asyncio.Future[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    async def spawn(**extra: str) -> GatewayProcess:
        port = free_port()
        env = {
            **os.environ,
            "INVENTIV_DATABASE_URL": settings.database_url or "",
            "INVENTIV_REDIS_URL": settings.redis_url or "",
            "INVENTIV_SECRET_KEY": settings.require("secret_key"),
            "INVENTIV_HOST": "127.0.0.1",
            "INVENTIV_GATEWAY_PORT": str(port),
            "INVENTIV_DATA_DIR": str(tmp_path / "data"),
            "INVENTIV_GATEWAY_REGISTRY_REFRESH_S": "0.5",
            "INVENTIV_GATEWAY_LOG_FLUSH_S": "0.2",
            **extra,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, start_new_session=True
        )
        gateway = GatewayProcess(proc, f"http://127.0.0.1:{port}")
        started.append(gateway)
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {proc.returncode}")
                try:
                    if (await client.get(gateway.url + "/readyz")).status_code == 200:
                        return gateway
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway did not become ready")
                await asyncio.sleep(0.1)

    yield spawn  # type: ignore[misc]
    for gateway in started:
        gateway.stop()


async def test_revoked_key_stops_working_on_every_replica_within_5s(
    spawn_gateway, seeded: Seeded, sessionmaker, redis_client: aioredis.Redis
) -> None:  # type: ignore[no-untyped-def]
    replicas = [await spawn_gateway(), await spawn_gateway()]
    headers = {"Authorization": f"Bearer {seeded.api_key}"}
    async with httpx.AsyncClient(headers=headers) as client:
        for replica in replicas:
            assert (await client.get(replica.url + "/v1/models")).status_code == 200

        # What the API does on revocation: mark the row, announce the key's hash.
        async with sessionmaker() as session:
            await session.exec(
                update(ApiKey)
                .where(ApiKey.id == seeded.api_key_row.id)  # type: ignore[arg-type]
                .values(revoked_at=datetime.now(UTC))
            )
            await session.commit()
        revoked_at = time.monotonic()
        await redis_client.publish(API_KEY_CHANNEL, seeded.api_key_row.key_hash)

        refused_after: list[float] = []
        for replica in replicas:
            while (await client.get(replica.url + "/v1/models")).status_code != 401:
                assert time.monotonic() - revoked_at < 5, "key still accepted after 5 s"
                await asyncio.sleep(0.05)
            refused_after.append(time.monotonic() - revoked_at)
    assert max(refused_after) < 5


async def test_rate_limits_are_exact_across_two_replicas(
    spawn_gateway,
    seeded: Seeded,
    sessionmaker,
    engines: Engines,
    registry: Registry,
) -> None:  # type: ignore[no-untyped-def]
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    limited_key, _ = await add_key(sessionmaker, seeded.project.id, rpm=10)
    replicas = [await spawn_gateway(), await spawn_gateway()]
    headers = {"Authorization": f"Bearer {limited_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        calls = [
            client.post(replicas[i % 2].url + "/v1/chat/completions", json=CHAT) for i in range(40)
        ]
        responses = await asyncio.gather(*calls)
    passed = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(passed) == 10
    assert len(refused) == 30
    assert {r.status_code for r in responses} == {200, 429}
    for response in refused:
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert {r.headers["x-ratelimit-limit-requests"] for r in passed} == {"10"}
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in passed)
    assert remaining == list(range(10))


async def test_token_limits_count_usage_from_both_replicas(
    spawn_gateway,
    seeded: Seeded,
    sessionmaker,
    engines: Engines,
    registry: Registry,
) -> None:  # type: ignore[no-untyped-def]
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    # Each request reserves its max_tokens (3) and uses 7 input + 3 output tokens: three fit
    # under 25 tokens per minute (20 used + 3 reserved), the fourth does not (30 used).
    limited_key, _ = await add_key(sessionmaker, seeded.project.id, tpm=25)
    replicas = [await spawn_gateway(), await spawn_gateway()]
    headers = {"Authorization": f"Bearer {limited_key}"}
    statuses = []
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for i in range(5):
            response = await client.post(
                replicas[i % 2].url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3}
            )
            statuses.append(response.status_code)
            await asyncio.sleep(0.6)  # the replica reports the tokens it saw within 0.25 s
    assert statuses == [200, 200, 200, 429, 429]


async def test_graceful_stop_flushes_request_logs(
    spawn_gateway,
    seeded: Seeded,
    sessionmaker,
    engines: Engines,
    registry: Registry,
) -> None:  # type: ignore[no-untyped-def]
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    # Logs would only be written after 10 minutes: what reaches the table comes from the stop.
    replica = await spawn_gateway(INVENTIV_GATEWAY_LOG_FLUSH_S="600")
    headers = {"Authorization": f"Bearer {seeded.api_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for stream in (False, True, False):
            response = await client.post(
                replica.url + "/v1/chat/completions", json={**CHAT, "stream": stream}
            )
            assert response.status_code == 200

    async def count() -> int:
        async with sessionmaker() as session:
            return int((await session.exec(select(func.count()).select_from(RequestLog))).one())

    assert await count() == 0
    assert replica.stop() == 0
    assert await count() == 3
    async with sessionmaker() as session:
        rows = (await session.exec(select(RequestLog))).all()
    assert sorted(r.streamed for r in rows) == [False, False, True]
    assert all(r.output_tokens == 3 and r.input_tokens == 7 for r in rows)


async def test_leased_limits_stay_exact_and_spare_redis(
    start_gateway,
    seeded: Seeded,
    sessionmaker,
    engines: Engines,
    registry: Registry,
    redis_client: aioredis.Redis,
) -> None:  # type: ignore[no-untyped-def]
    """Busy keys lease request slots (fewer Redis calls); the limit is still exact across two
    replicas, and slots leased but not used go back."""
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    limit = 1000
    limited_key, row = await add_key(sessionmaker, seeded.project.id, rpm=limit)
    replicas = [await start_gateway(), await start_gateway()]
    for replica in replicas:
        await wait_for(lambda r=replica: serving(r.app, MODEL))
    await redis_client.config_resetstat()

    statuses: list[int] = []
    headers = {"Authorization": f"Bearer {limited_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:

        async def worker(index: int, until: float, stop_at: int, pause_s: float = 0.0) -> None:
            sent = 0
            while time.monotonic() < until and len(statuses) < stop_at:
                url = replicas[(index + sent) % 2].url + "/v1/chat/completions"
                statuses.append((await client.post(url, json=CHAT)).status_code)
                sent += 1
                await asyncio.sleep(pause_s)

        # Traffic well under the limit (leases start), then on past the limit.
        await asyncio.gather(*(worker(i, time.monotonic() + 1.5, 650, 0.01) for i in range(6)))
        assert 429 not in statuses
        stats = await redis_client.info("commandstats")
        # Leases served most requests after the first quarter second.
        assert int(stats["cmdstat_evalsha"]["calls"]) < len(statuses) * 0.5
        await asyncio.gather(*(worker(i, time.monotonic() + 60, limit + 200) for i in range(8)))

    assert len(statuses) >= limit + 200
    assert statuses.count(200) == limit
    assert statuses.count(429) == len(statuses) - limit
    # Unused leased slots are given back: the window holds exactly the admitted requests.
    key = rate_limit_key(str(row.id), "rpm", 60)
    await asyncio.sleep(0.6)
    assert await redis_client.zcard(key) == limit


async def test_worker_processes_share_the_port_and_metrics(
    spawn_gateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    engine = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    replica = await spawn_gateway(INVENTIV_GATEWAY_WORKERS="2")
    headers = {"Authorization": f"Bearer {seeded.api_key}"}
    # New connections spread over both workers (SO_REUSEPORT): each request on its own one.
    for _ in range(20):
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            response = await client.post(replica.url + "/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
    assert len(engine.requests) == 20
    line = f'inventiv_gateway_requests_total{{code="200",model="{MODEL}"}} '
    # Whichever worker answers /metrics reports both workers' requests; the other worker's
    # counts of its last quarter second arrive with its next flush (gateway.metrics).
    seen: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):
            text = (await client.get(replica.url + "/metrics")).text
            seen += [float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)]
            if seen[-1] == 20:
                break
            await asyncio.sleep(0.1)
    assert seen[-1] == 20, seen


async def test_sigterm_lets_in_flight_requests_finish(
    spawn_gateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    engine = await engines.start("a")
    hold = asyncio.Event()
    engine.behaviour.hold = hold
    await registry.put(registry.instance(engines.servers["a"].url))
    replica = await spawn_gateway()
    headers = {"Authorization": f"Bearer {seeded.api_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        in_flight = asyncio.create_task(
            client.post(replica.url + "/v1/chat/completions", json=CHAT)
        )
        await wait_for(lambda: engine.active == 1)
        replica.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert replica.proc.poll() is None  # still draining
        with pytest.raises(httpx.TransportError):  # no new connections meanwhile
            await client.get(replica.url + "/healthz", headers={"Connection": "close"})
        hold.set()
        response = await in_flight
    assert response.status_code == 200
    assert await asyncio.to_thread(replica.proc.wait, 10) == 0
