"""Routing as clients and operators see it: where requests land under uneven load and capacity,
stickiness, the queue, failover, ejection and draining."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest
import redis.asyncio as aioredis

from core.embedded import free_port
from core.redis_keys import INSTANCE_LOAD, gateway_load_key
from core.wire import GatewayLoad, RoutingStrategy
from gateway.settings import GatewaySettings
from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, add_key, serving
from tests.gateway.engine import RunningServer, TestEngine
from tests.gateway.test_api import wait_for

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def ready(gateway: RunningGateway, count: int) -> None:
    await wait_for(lambda: len(serving(gateway.app, MODEL)) == count)


async def test_least_outstanding_weighted_by_gpu_count(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    hold = asyncio.Event()
    small, big = await engines.start("small"), await engines.start("big")
    small.behaviour.hold = big.behaviour.hold = hold
    await registry.put(registry.instance(engines.servers["small"].url, gpu_count=1))
    await registry.put(registry.instance(engines.servers["big"].url, gpu_count=2))
    await ready(gateway, 2)
    async with gateway.client(seeded.api_key) as client:
        calls = [
            asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(30)
        ]
        await wait_for(lambda: small.active + big.active == 30)
        # Outstanding requests per GPU are equal: twice as many on the two-GPU instance.
        assert (small.active, big.active) == (10, 20)
        hold.set()
        responses = await asyncio.gather(*calls)
    assert all(r.status_code == 200 for r in responses)


async def test_reported_engine_queue_steers_traffic_unless_stale(
    gateway: RunningGateway,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    redis_client: aioredis.Redis,
) -> None:
    busy, idle = await engines.start("busy"), await engines.start("idle")
    busy_instance = registry.instance(engines.servers["busy"].url)
    await registry.put(busy_instance)
    await registry.put(registry.instance(engines.servers["idle"].url))
    await ready(gateway, 2)
    report = {"requests_running": 8, "requests_waiting": 12, "kv_cache_usage": 0.97}
    await redis_client.hset(
        INSTANCE_LOAD, busy_instance.instance_id, orjson.dumps({"ts": time.time(), **report})
    )
    backend = gateway.app.router.backends[busy_instance.instance_id]
    await wait_for(lambda: backend.reported_waiting == 12)
    async with gateway.client(seeded.api_key) as client:
        for _ in range(10):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert (len(busy.requests), len(idle.requests)) == (0, 10)

    # The same report, but older than the staleness limit: ignored, traffic spreads again.
    await redis_client.hset(
        INSTANCE_LOAD, busy_instance.instance_id, orjson.dumps({"ts": time.time() - 60, **report})
    )
    await wait_for(lambda: backend.reported_at < time.time() - 30)
    async with gateway.client(seeded.api_key) as client:
        for _ in range(10):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert len(busy.requests) == 5


async def test_sessions_stick_to_one_instance_with_bounded_load(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    started = [await engines.start(name) for name in ("a", "b", "c")]
    for name in ("a", "b", "c"):
        await registry.put(
            registry.instance(engines.servers[name].url, routing=RoutingStrategy.sticky_header)
        )
    await ready(gateway, 3)

    def served_by() -> list[str]:
        return [e.name for e in started for _ in e.requests]

    async with gateway.client(seeded.api_key) as client:
        homes: dict[str, set[str]] = {}
        for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
            for _ in range(4):
                before = {e.name: len(e.requests) for e in started}
                response = await client.post(
                    "/v1/chat/completions", json=CHAT, headers={"x-session-id": session}
                )
                assert response.status_code == 200
                after = {e.name: len(e.requests) for e in started}
                (target,) = [n for n in after if after[n] != before[n]]
                homes.setdefault(session, set()).add(target)
        # Each session always lands on the same instance, and sessions spread over instances.
        assert all(len(targets) == 1 for targets in homes.values())
        assert len({next(iter(t)) for t in homes.values()}) >= 2

        # Bounded load: a session's home fills up, so its extra requests go elsewhere.
        (home,) = homes["alice"]
        hold = asyncio.Event()
        for engine in started:
            engine.behaviour.hold = hold
        calls = [
            asyncio.create_task(
                client.post("/v1/chat/completions", json=CHAT, headers={"x-session-id": "alice"})
            )
            for _ in range(12)
        ]
        await wait_for(lambda: sum(e.active for e in started) == 12)
        on_home = next(e for e in started if e.name == home).active
        # Load factor 1.25 over 3 instances: the home takes at most ceil(1.25 * 12 / 3) = 5.
        assert 2 <= on_home <= 5
        hold.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(*calls))
    assert served_by()


async def test_user_field_names_the_session_when_configured(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    a, b = await engines.start("a"), await engines.start("b")
    await registry.put(
        registry.instance(engines.servers["a"].url, routing=RoutingStrategy.sticky_user)
    )
    await registry.put(
        registry.instance(engines.servers["b"].url, routing=RoutingStrategy.sticky_user)
    )
    await ready(gateway, 2)
    async with gateway.client(seeded.api_key) as client:
        for _ in range(6):
            response = await client.post("/v1/chat/completions", json={**CHAT, "user": "u-42"})
            assert response.status_code == 200
    assert sorted([len(a.requests), len(b.requests)]) == [0, 6]


async def test_queue_waits_for_capacity_then_times_out_with_503(
    start_gateway,
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
) -> None:  # type: ignore[no-untyped-def]
    gateway_settings.max_inflight_per_gpu = 1
    gateway_settings.queue_deadline_s = 1.0
    gateway = await start_gateway()
    engine = await engines.start("a")
    hold = asyncio.Event()
    engine.behaviour.hold = hold
    await registry.put(registry.instance(engines.servers["a"].url))
    await ready(gateway, 1)
    async with gateway.client(seeded.api_key) as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: engine.active == 1)
        waited = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: gateway.app.router.queue(str(seeded.deployment.id)).length == 1)
        assert engine.active == 1  # the second request waits in the gateway, not in the engine
        hold.set()
        assert (await first).status_code == 200
        assert (await waited).status_code == 200

        hold.clear()
        blocker = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: engine.active == 1)
        started = time.monotonic()
        refused = await client.post("/v1/chat/completions", json=CHAT)
        waited_s = time.monotonic() - started
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "no_capacity"
        assert 0.9 <= waited_s < 5
        hold.set()
        assert (await blocker).status_code == 200


async def test_queue_is_fair_between_keys(
    start_gateway,
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    sessionmaker,
) -> None:  # type: ignore[no-untyped-def]
    gateway_settings.max_inflight_per_gpu = 1
    gateway_settings.queue_deadline_s = 10
    gateway = await start_gateway()
    other_key, _ = await add_key(sessionmaker, seeded.project.id)
    engine = await engines.start("a")
    hold = asyncio.Event()
    engine.behaviour.hold = hold
    await registry.put(registry.instance(engines.servers["a"].url))
    await ready(gateway, 1)
    queue = gateway.app.router.queue(str(seeded.deployment.id))
    async with gateway.client(seeded.api_key) as greedy, gateway.client(other_key) as polite:
        calls = []

        async def send(client: httpx.AsyncClient, tag: str) -> httpx.Response:
            return await client.post(
                "/v1/chat/completions",
                json={**CHAT, "messages": [{"role": "user", "content": tag}]},
            )

        calls.append(asyncio.create_task(send(greedy, "g0")))
        await wait_for(lambda: engine.active == 1)
        for i in range(1, 5):
            calls.append(asyncio.create_task(send(greedy, f"g{i}")))
            await wait_for(lambda i=i: queue.length == i)
        calls.append(asyncio.create_task(send(polite, "p0")))
        await wait_for(lambda: queue.length == 5)
        hold.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(*calls))
    order = [r.body["messages"][0]["content"] for r in engine.requests]
    # The second key's only request is served right after the first key's oldest waiting one.
    assert order == ["g0", "g1", "p0", "g2", "g3", "g4"]


async def test_model_starting_up_waits_then_is_served(
    gateway: RunningGateway,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    redis_client: aioredis.Redis,
) -> None:
    # Watch the load signals the autoscaler reads while the test runs.
    loads: list[GatewayLoad] = []

    async def watch() -> None:
        key = gateway_load_key(str(seeded.deployment.id))
        while True:
            for raw in (await redis_client.hgetall(key)).values():
                loads.append(GatewayLoad.model_validate_json(raw))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    async with gateway.client(seeded.api_key) as client:
        # A deployment exists but nothing is ready: 503 with Retry-After after the deadline.
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503
        assert "retry-after" in refused.headers
        # An instance becoming ready while a request waits serves it.
        waiting = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: gateway.app.router.queue(str(seeded.deployment.id)).length == 1)
        await asyncio.sleep(0.5)
        await engines.start("late")
        await registry.put(registry.instance(engines.servers["late"].url))
        served = await waiting
        assert served.status_code == 200
    await asyncio.sleep(0.5)
    watcher.cancel()

    assert {load.replica_id for load in loads} == {gateway.app.replica_id}
    assert {load.model for load in loads} == {MODEL}
    assert any(load.queue_length == 1 for load in loads)
    last = loads[-1]
    # Cumulative counters, never reset between reports: the whole test is in the last one.
    assert last.queue_length == 0
    assert (last.arrivals_total, last.rejected_total, last.dequeued_total) == (2, 1, 2)
    assert last.completed_total == 1
    # The tokens the engine reported for the served request (token-based target tracking).
    usage = served.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert (last.prompt_tokens_total, last.output_tokens_total) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert last.queue_wait_s_total >= 1.9 + 0.5  # the 2 s deadline wait and the late one
    assert [load.arrivals_total for load in loads] == sorted(load.arrivals_total for load in loads)
    assert last.active_request_s_total >= 2.0  # one request queued for over 2 s


async def test_failover_before_first_byte_and_ejection(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    healthy, broken = await engines.start("healthy"), await engines.start("broken")
    broken.behaviour.fail_status = 500
    await registry.put(registry.instance(engines.servers["healthy"].url))
    await registry.put(registry.instance(engines.servers["broken"].url))
    # An instance whose port refuses connections.
    await registry.put(registry.instance(f"http://127.0.0.1:{free_port()}"))
    await ready(gateway, 3)
    async with gateway.client(seeded.api_key) as client:
        responses = [await client.post("/v1/chat/completions", json=CHAT) for _ in range(12)]
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert len(healthy.requests) == 12
        # After three failures in a row the broken instance is skipped for a while.
        failed = len(broken.requests)
        assert failed == 3
        for _ in range(5):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert len(broken.requests) == failed


async def test_no_retry_after_the_first_byte(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    a, b = await engines.start("a"), await engines.start("b")
    for engine in (a, b):
        engine.behaviour.tokens = 5
        engine.behaviour.break_after = 2
    await registry.put(registry.instance(engines.servers["a"].url))
    await registry.put(registry.instance(engines.servers["b"].url))
    await ready(gateway, 2)
    async with gateway.client(seeded.api_key) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) == 3  # two tokens, then an error event the client can see
    assert '"t0 "' in events[0] and '"t1 "' in events[1]
    assert "stream_broken" in events[2]
    assert len(a.requests) + len(b.requests) == 1  # the request was not replayed elsewhere


async def test_a_stream_torn_mid_event_ends_with_a_clean_error_event(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    """The engine dies halfway through writing an event: the client never sees the torn half,
    only whole events and then the error event, so the official client raises an APIError
    rather than a JSON decoding error."""
    engine = await engines.start("torn")
    engine.behaviour.tokens = 5
    engine.behaviour.break_after = 2
    engine.behaviour.break_mid_event = True
    await registry.put(registry.instance(engines.servers["torn"].url))
    await ready(gateway, 1)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="stream broke"):
        stream = await client.chat.completions.create(**{**CHAT, "stream": True})
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["t0 ", "t1 "]


async def test_engine_dying_mid_answer_is_a_clear_502(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    a, b = await engines.start("a"), await engines.start("b")
    for engine in (a, b):
        engine.behaviour.break_after = 0
    await registry.put(registry.instance(engines.servers["a"].url))
    await registry.put(registry.instance(engines.servers["b"].url))
    await ready(gateway, 2)
    async with gateway.client(seeded.api_key) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "engine_failed"
    assert len(a.requests) + len(b.requests) == 1  # the engine had started: not replayed


async def test_draining_instance_finishes_in_flight_and_gets_nothing_new(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    leaving, staying = await engines.start("leaving"), await engines.start("staying")
    hold = asyncio.Event()
    leaving.behaviour.hold = hold
    leaving_instance = registry.instance(engines.servers["leaving"].url)
    await registry.put(leaving_instance)
    await ready(gateway, 1)
    async with gateway.client(seeded.api_key) as client:
        in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: leaving.active == 1)
        await registry.put(registry.instance(engines.servers["staying"].url))
        await registry.remove(leaving_instance.instance_id)
        await wait_for(lambda: leaving_instance.instance_id not in gateway.app.router.backends)
        for _ in range(5):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (len(leaving.requests), len(staying.requests)) == (1, 5)
        hold.set()
        response = await in_flight
    assert response.status_code == 200
    assert response.json()["served_by"] == "leaving"


async def test_full_queue_refuses_at_once(
    start_gateway,
    gateway_settings: GatewaySettings,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
) -> None:  # type: ignore[no-untyped-def]
    gateway_settings.max_inflight_per_gpu = 1
    gateway_settings.queue_size = 1
    gateway_settings.queue_deadline_s = 10
    gateway = await start_gateway()
    engine = await engines.start("a")
    hold = asyncio.Event()
    engine.behaviour.hold = hold
    await registry.put(registry.instance(engines.servers["a"].url))
    await ready(gateway, 1)
    async with gateway.client(seeded.api_key) as client:
        running = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: engine.active == 1)
        queued = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await wait_for(lambda: gateway.app.router.queue(str(seeded.deployment.id)).length == 1)
        started = time.monotonic()
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503
        assert time.monotonic() - started < 1  # no wait for the deadline: the queue is full
        assert "retry-after" in refused.headers
        hold.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200


async def test_engine_closing_idle_connections_is_harmless(
    gateway: RunningGateway, seeded: Seeded, registry: Registry
) -> None:
    engine = TestEngine(name="short-keepalive")
    server = RunningServer(engine, free_port(), keep_alive_s=1)
    await server.start()
    try:
        await registry.put(registry.instance(server.url))
        await ready(gateway, 1)
        async with gateway.client(seeded.api_key) as client:
            for _ in range(3):
                assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
                await asyncio.sleep(1.3)  # the engine closed the pooled connection meanwhile
        assert len(engine.requests) == 3
    finally:
        await server.stop()
