"""The OpenAI surface: keys, errors, models, completions (plain and streamed) with the official
client, and request logs with usage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from sqlmodel import col, select

from core.models import ApiKey, RequestLog
from tests.factories import Seeded, seed
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, serving


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def metric_value(text: str, prefix: str) -> float:
    """The value of the exposition line starting with `prefix` (0 when absent)."""
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(found[0][len(prefix) :]) if found else 0.0


def assert_openai_error(body: dict, code: str | None) -> None:  # type: ignore[type-arg]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code


async def test_keys_are_required_and_checked(gateway: RunningGateway, seeded: Seeded) -> None:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with gateway.client(None) as client:
        missing = await client.post("/v1/chat/completions", json=payload)
    async with gateway.client("sk-inv-not-a-key") as client:
        wrong = await client.post("/v1/chat/completions", json=payload)
        models = await client.get("/v1/models")
    for response in (missing, wrong, models):
        assert response.status_code == 401
        assert_openai_error(response.json(), "invalid_api_key")


async def test_bad_requests_get_clear_4xx(gateway: RunningGateway, seeded: Seeded) -> None:
    async with gateway.client(seeded.api_key) as client:
        not_json = await client.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        no_messages = await client.post("/v1/chat/completions", json={"model": MODEL})
        no_model = await client.post("/v1/completions", json={"prompt": "x"})
        not_object = await client.post("/v1/completions", json=[1, 2])
        bad_stream = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": "yes"}
        )
        unknown = await client.post(
            "/v1/chat/completions",
            json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        )
        wrong_method = await client.get("/v1/chat/completions")
    for response in (not_json, no_messages, no_model, not_object, bad_stream):
        assert response.status_code == 400, response.text
        assert_openai_error(response.json(), "invalid_request")
    assert no_messages.json()["error"]["param"] == "messages"
    assert unknown.status_code == 404
    assert_openai_error(unknown.json(), "model_not_found")
    assert wrong_method.status_code == 405


async def test_models_lists_served_names(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url, model="other-model"))
    await wait_for(lambda: serving(gateway.app, "other-model"))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)
    names = sorted([m.id async for m in client.models.list()])
    assert names == ["other-model", MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nothing")
    assert engine.requests == []  # listing models never reaches an engine


@pytest.mark.parametrize("gateway_server", ["lean", "uvicorn"])
async def test_openai_client_every_endpoint_and_usage_logged(
    gateway: RunningGateway,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    sessionmaker,  # type: ignore[no-untyped-def]
) -> None:
    engine = await engines.start("a")
    instance = registry.instance(engines.servers["a"].url)
    await registry.put(instance)
    await wait_for(lambda: serving(gateway.app, MODEL))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)

    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert chat.choices[0].message.content == "t0 t1 t2"
    assert chat.usage is not None and chat.usage.completion_tokens == 3

    completion = await client.completions.create(model=MODEL, prompt="hello")
    assert completion.choices[0].text == "t0 t1 t2"

    embedding = await client.embeddings.create(model=MODEL, input="hello")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]

    # A stream without include_usage: the client sees no usage chunk, the log still has usage.
    pieces = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    async for chunk in stream:
        assert chunk.choices, "the usage-only chunk the gateway asked for must be removed"
        pieces.append(chunk.choices[0].delta.content)
    assert "".join(p for p in pieces if p) == "t0 t1 t2 "
    assert engine.requests[-1].body["stream_options"] == {"include_usage": True}

    # A stream that asked for usage keeps it.
    completion_stream = await client.completions.create(
        model=MODEL, prompt="hello", stream=True, stream_options={"include_usage": True}
    )
    usages = [chunk.usage async for chunk in completion_stream if chunk.usage is not None]
    assert [u.completion_tokens for u in usages] == [3]

    async def logged() -> list[RequestLog]:
        async with sessionmaker() as session:
            return list((await session.exec(select(RequestLog).order_by(col(RequestLog.id)))).all())

    rows: list[RequestLog] = []
    for _ in range(100):
        rows = await logged()
        if len(rows) == 5:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 5
    assert [r.streamed for r in rows] == [False, False, False, True, True]
    assert [r.output_tokens for r in rows] == [3, 3, 0, 3, 3]
    assert all(r.input_tokens == 7 for r in rows)
    assert all(r.status_code == 200 for r in rows)
    assert {r.api_key_id for r in rows} == {seeded.api_key_row.id}
    assert {str(r.instance_id) for r in rows} == {instance.instance_id}
    assert {r.deployment_id for r in rows} == {seeded.deployment.id}
    assert all(r.ttft_ms is not None and r.ttft_ms > 0 for r in rows if r.streamed)


async def test_health_and_metrics(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    requests_line = f'inventiv_gateway_requests_total{{code="200",model="{MODEL}"}} '
    tokens_line = f'inventiv_gateway_output_tokens_total{{model="{MODEL}"}} '

    async with gateway.client(seeded.api_key) as client:
        before = (await client.get("/metrics")).text
        for _ in range(3):
            payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=payload)).status_code == 200
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        after = (await client.get("/metrics")).text
    assert health.status_code == 200
    assert ready.status_code == 200
    assert metric_value(after, requests_line) - metric_value(before, requests_line) == 3
    assert metric_value(after, tokens_line) - metric_value(before, tokens_line) == 9
    assert "inventiv_gateway_request_duration_seconds_bucket" in after


async def test_metrics_of_a_deployment_start_at_zero_before_its_first_request(
    start_gateway: Callable[[], Awaitable[RunningGateway]], sessionmaker: Any
) -> None:
    """A served name's series exist, at 0, as soon as the gateway knows the deployment: a
    series born already counting hides its first increase from Prometheus' rate() (a TTFT p95
    of NaN after a burst shorter than a scrape interval)."""
    model = f"declared-{uuid.uuid4().hex[:8]}"  # the registry is the process's: a fresh name
    async with sessionmaker() as session:
        await seed(session, model=model)
    gateway = await start_gateway()
    async with gateway.client(None) as client:
        text = (await client.get("/metrics")).text
    for line in (
        f'inventiv_gateway_time_to_first_token_seconds_count{{model="{model}"}} 0.0',
        f'inventiv_gateway_time_to_first_token_seconds_bucket{{le="0.005",model="{model}"}} 0.0',
        f'inventiv_gateway_request_duration_seconds_count{{model="{model}"}} 0.0',
        f'inventiv_gateway_output_tokens_total{{model="{model}"}} 0.0',
        f'inventiv_gateway_requests_total{{code="200",model="{model}"}} 0.0',
    ):
        assert line in text.splitlines(), line


async def test_overhead_header_and_histogram_leave_the_engine_time_out(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    """`x-inventiv-overhead-ms` (read with the official client's raw response) and the
    `inventiv_gateway_overhead_seconds` histogram give the gateway's own time: an engine that
    takes half a second to answer, or to send its first token, adds nothing to them."""
    engine = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    engine_s = 0.5
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=seeded.api_key)
    count_line = f'inventiv_gateway_overhead_seconds_count{{model="{MODEL}"}} '
    sum_line = f'inventiv_gateway_overhead_seconds_sum{{model="{MODEL}"}} '

    async with gateway.client(seeded.api_key) as http:
        before = (await http.get("/metrics")).text

    hold = engine.behaviour.hold = asyncio.Event()

    async def answer_after_a_while() -> None:  # counted from the request's arrival at the engine
        await wait_for(lambda: len(engine.requests) == 1)
        await asyncio.sleep(engine_s)
        hold.set()

    loop = asyncio.get_running_loop()
    answering = asyncio.create_task(answer_after_a_while())
    started = loop.time()
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    whole_s = loop.time() - started
    await answering
    assert raw.parse().choices[0].message.content == "t0 t1 t2"
    whole_overhead_ms = float(raw.headers["x-inventiv-overhead-ms"])

    engine.behaviour.hold = None
    engine.behaviour.first_token_delay_s = engine_s
    started = loop.time()
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
    ) as streamed:
        stream_overhead_ms = float(streamed.headers["x-inventiv-overhead-ms"])
        chunks = [line async for line in streamed.iter_lines() if line.startswith("data: {")]
    stream_s = loop.time() - started
    assert len(chunks) == 3

    async with gateway.client(seeded.api_key) as http:
        after = (await http.get("/metrics")).text
    for overhead_ms, total_s in ((whole_overhead_ms, whole_s), (stream_overhead_ms, stream_s)):
        assert total_s >= engine_s
        assert 0 <= overhead_ms < (total_s - engine_s) * 1000 + 1, (overhead_ms, total_s)
    assert metric_value(after, count_line) - metric_value(before, count_line) == 2
    observed_s = metric_value(after, sum_line) - metric_value(before, sum_line)
    assert observed_s == pytest.approx((whole_overhead_ms + stream_overhead_ms) / 1000, abs=2e-6)


async def test_a_key_used_through_the_gateway_shows_when_it_was_last_used(
    gateway: RunningGateway,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    sessionmaker,  # type: ignore[no-untyped-def]
) -> None:
    """`last_used_at` is written in batches (every 5 s) by the gateway, not per request."""
    await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))
    await wait_for(lambda: serving(gateway.app, MODEL))
    async with gateway.client(seeded.api_key) as client:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=payload)).status_code == 200

    async def last_used() -> object:
        async with sessionmaker() as session:
            row = await session.get(ApiKey, seeded.api_key_row.id)
            assert row is not None
            await session.refresh(row)
            return row.last_used_at

    seen = None
    for _ in range(80):
        seen = await last_used()
        if seen is not None:
            break
        await asyncio.sleep(0.1)
    assert seen is not None
