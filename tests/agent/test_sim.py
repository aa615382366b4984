"""The vLLM simulator, served for real over HTTP and read with the official `openai` client."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.sim.config import parse_args
from agent.sim.server import create_app
from core.embedded import free_port
from tests.agent.helpers import REPO_ROOT, serving, spawn, wait_for

MODEL = "sim-model"


@asynccontextmanager
async def simulator(*flags: str) -> AsyncIterator[str]:
    """The simulator's app in this process, behind a real uvicorn server."""
    config = parse_args([MODEL, *flags])
    async with serving(create_app(config)) as url:
        yield url


def client(url: str, **options: float) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **options)


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_every_endpoint_parses_with_the_openai_client() -> None:
    async with simulator("--served-model-name", MODEL, "alias") as url:
        api = client(url)
        models = await api.models.list()
        assert [m.id for m in models.data] == [MODEL, "alias"]

        chat = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there, engine!"}],
            max_tokens=7,
        )
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
        assert chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.completion_tokens == 7
        # deterministic tokenizer: 3 reply + 4 per message + "Hell o ther e , engi ne !" = 15
        assert chat.usage.prompt_tokens == 15

        stream = await api.chat.completions.create(
            model="alias",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 5
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
        assert all(c.usage is None for c in chunks[:-1])

        completion = await api.completions.create(model=MODEL, prompt="Once upon", max_tokens=4)
        assert completion.usage is not None and completion.usage.prompt_tokens == 2
        assert len(completion.choices[0].text.split()) == 4

        streamed = await api.completions.create(
            model=MODEL, prompt=[1, 2, 3], max_tokens=3, stream=True
        )
        pieces = [chunk async for chunk in streamed]
        assert pieces[-1].choices[0].finish_reason == "length"
        assert all(p.usage is None for p in pieces)  # no usage chunk unless asked for


async def test_without_max_tokens_the_answer_ends_with_stop() -> None:
    async with simulator("--default-max-tokens", "6") as url:
        chat = await client(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens == 6


async def test_same_seed_gives_the_same_output() -> None:
    async with simulator("--seed", "7") as url:
        api = client(url)
        texts = [
            (await api.completions.create(model=MODEL, prompt="x", max_tokens=8, seed=42))
            .choices[0]
            .text
            for _ in range(2)
        ]
    assert texts[0] == texts[1]


async def test_bad_requests_get_vllm_style_errors() -> None:
    async with simulator("--max-model-len", "64") as url:
        api = client(url)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await api.completions.create(model="other", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="maximum context length is 64"):
            await api.completions.create(model=MODEL, prompt="word " * 80, max_tokens=1)
        async with httpx.AsyncClient(base_url=url) as http:
            broken = await http.post("/v1/chat/completions", content=b"{not json")
            missing = await http.post("/v1/chat/completions", json={"model": MODEL})
        assert broken.status_code == 400 and missing.status_code == 400
        assert "messages" in missing.json()["error"]["message"]
        assert missing.json()["error"]["param"] == "body.messages"


BAD_BODIES = [
    ("/v1/chat/completions", []),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [1, 2]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [], "max_tokens": -3}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}], "n": 0}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}], "temperature": -1}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream_options": {}}),
    ("/v1/chat/completions", {"model": 5, "messages": []}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": {"x": 1}}]}),
    ("/v1/completions", {"model": MODEL}),
    ("/v1/completions", {"model": MODEL, "prompt": None}),
    ("/v1/completions", {"model": MODEL, "prompt": ""}),
    ("/v1/completions", {"model": MODEL, "prompt": []}),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}),
    ("/v1/completions", {"model": MODEL, "prompt": [[1], "a"]}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "many"}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes please"}),
]


async def test_malformed_requests_get_a_4xx_never_a_500() -> None:
    async with simulator() as url, httpx.AsyncClient(base_url=url) as http:
        answers = [(body, await http.post(path, json=body)) for path, body in BAD_BODIES]
    for body, response in answers:
        assert 400 <= response.status_code < 500, (body, response.text)
        error = response.json()["error"]
        assert error["message"] and error["code"] == response.status_code, body
        assert set(error) == {"message", "type", "param", "code"}, body


async def test_requests_beyond_max_num_seqs_wait_and_their_ttft_grows() -> None:
    async with simulator("--max-num-seqs", "2", "--inter-token-latency-s", "0.02") as url:
        api = client(url)

        async def ttft() -> float:
            start = time.monotonic()
            stream = await api.completions.create(
                model=MODEL, prompt="hello", max_tokens=15, stream=True
            )
            first: float | None = None
            async for _ in stream:
                first = first or time.monotonic() - start
            assert first is not None
            return first

        tasks = [asyncio.create_task(ttft()) for _ in range(6)]

        async def queued() -> dict[str, float] | None:
            metrics = await scrape(url)
            return metrics if metrics["vllm:num_requests_waiting"] > 0 else None

        metrics = await wait_for(queued, 10, "requests to queue")
        assert metrics["vllm:num_requests_running"] == 2
        assert metrics["vllm:num_requests_waiting"] == 4
        ttfts = sorted(await asyncio.gather(*tasks))
        # the last two waited for two full batches of 15 tokens before their first token
        assert ttfts[-1] > 3 * ttfts[0]
        after = await scrape(url)
        assert after["vllm:num_requests_waiting"] == after["vllm:num_requests_running"] == 0
        assert after["vllm:time_to_first_token_seconds_count"] == 6
        assert after["vllm:generation_tokens_total"] == 6 * 15


async def test_kv_cache_usage_rises_with_long_prompts_and_full_cache_makes_requests_wait() -> None:
    async with simulator("--kv-cache-tokens", "2048", "--inter-token-latency-s", "0.02") as url:
        api = client(url)
        long_prompt = "word " * 1200  # 1200 tokens + 20 output: 60% of the cache each
        tasks = [
            asyncio.create_task(
                api.completions.create(model=MODEL, prompt=long_prompt, max_tokens=20)
            )
            for _ in range(2)
        ]

        async def full() -> dict[str, float] | None:
            metrics = await scrape(url)
            return metrics if metrics["vllm:kv_cache_usage_perc"] > 0.5 else None

        metrics = await wait_for(full, 10, "KV usage to rise")
        assert metrics["vllm:num_requests_running"] == 1  # the second does not fit beside it
        assert metrics["vllm:num_requests_waiting"] == 1
        await asyncio.gather(*tasks)
        assert (await scrape(url))["vllm:kv_cache_usage_perc"] == 0


async def test_injected_errors_and_hangs() -> None:
    async with simulator("--fault-error-rate", "503:1.0") as url:
        with pytest.raises(openai.APIStatusError) as raised:
            await client(url).completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert raised.value.status_code == 503
    async with simulator("--fault-hang-rate", "1", "--fault-hang-s", "5") as url:
        with pytest.raises(openai.APITimeoutError):
            await client(url, timeout=0.5).completions.create(model=MODEL, prompt="x", max_tokens=1)


async def test_an_injected_stream_failure_ends_the_stream_with_an_error_event() -> None:
    async with simulator("--fault-stream-abort-rate", "1") as url:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 10, "stream": True}
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post("/v1/completions", json=body)
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        # like vLLM: tokens so far, then the error in band, then the end of the stream
        assert response.status_code == 200 and events[-1] == "[DONE]"
        assert orjson.loads(events[-2]) == {
            "error": {
                "message": "Internal server error",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        }
        # the 5 tokens made before the failure (max_tokens // 2), each sent as it came
        assert [orjson.loads(e)["choices"][0]["finish_reason"] for e in events[:-2]] == [None] * 5

        api = client(url)
        stream = await api.completions.create(model=MODEL, prompt="x", max_tokens=10, stream=True)
        with pytest.raises(openai.APIError, match="Internal server error"):
            async for _ in stream:
                pass
        unstreamed = await api.completions.create(model=MODEL, prompt="x", max_tokens=3)
        assert unstreamed.usage is not None and unstreamed.usage.completion_tokens == 3

        async def idle() -> bool:
            return (await scrape(url))["vllm:num_requests_running"] == 0

        await wait_for(idle, 10, "the failed sequences to be freed")


async def test_a_repeated_prompt_prefix_is_served_from_the_prefix_cache() -> None:
    flags = ("--prefill-per-token-s", "0.0005", "--enable-prompt-tokens-details")
    async with simulator(*flags) as url:
        api = client(url)
        shared = "You are a helpful assistant. " * 200  # ~1400 tokens of shared system prompt

        async def ttft(question: str) -> tuple[float, int]:
            start = time.monotonic()
            stream = await api.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": shared},
                    {"role": "user", "content": question},
                ],
                max_tokens=2,
                stream=True,
                stream_options={"include_usage": True},
            )
            first: float | None = None
            cached = -1
            async for chunk in stream:
                first = first or time.monotonic() - start
                if chunk.usage is not None and chunk.usage.prompt_tokens_details is not None:
                    cached = chunk.usage.prompt_tokens_details.cached_tokens or 0
            assert first is not None
            return first, cached

        cold, cold_cached = await ttft("What is a GPU?")
        warm, warm_cached = await ttft("What is a KV cache?")
        metrics = await scrape(url)
    assert cold_cached == 0 and warm_cached >= 1400
    assert warm < cold / 3  # ~0.7 s of prefill skipped
    assert metrics["vllm:prefix_cache_hits_total"] == warm_cached
    assert metrics["vllm:prefix_cache_queries_total"] > 2 * warm_cached


async def test_cli_accepts_vllm_flags_and_crashes_after_n_requests(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "agent.sim",
        "--model", MODEL, "--port", str(port), "--model-load-delay-s", "0.1",
        "--enforce-eager", "--dtype", "bfloat16", "--fault-crash-after", "2",
    ]  # fmt: skip
    process = await asyncio.to_thread(
        spawn, command, {"PYTHONPATH": str(REPO_ROOT)}, tmp_path / "sim.log"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_for(lambda: _answers(url), 20, "the simulator to listen")
        api = client(url)
        for _ in range(2):
            await api.completions.create(model=MODEL, prompt="x", max_tokens=1)
        with pytest.raises(openai.APIConnectionError):
            await api.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert await asyncio.to_thread(process.wait, 10) == 70
        log = (tmp_path / "sim.log").read_text()
        assert "--enforce-eager --dtype bfloat16" in log and "simulated crash" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_decoding_slows_down_as_the_batch_grows() -> None:
    flags = ("--inter-token-latency-s", "0.01", "--decode-slowdown-per-seq", "0.5")
    async with simulator(*flags) as url:
        api = client(url)

        async def latency() -> float:
            start = time.monotonic()
            await api.completions.create(model=MODEL, prompt="x", max_tokens=20)
            return time.monotonic() - start

        alone = await latency()
        together = await asyncio.gather(*(latency() for _ in range(8)))
    # 8 sequences decode at 1 + 0.5 * 7 = 4.5 times the single-sequence step
    assert min(together) > 2.5 * alone


async def test_a_client_that_disconnects_frees_its_slot() -> None:
    flags = ("--max-num-seqs", "1", "--inter-token-latency-s", "0.02")
    async with simulator(*flags) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1000, "stream": True}
            async with http.stream("POST", "/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # one token, then hang up: 1000 tokens would take 20 s

            async def idle() -> bool:
                return (await scrape(url))["vllm:num_requests_running"] == 0

            await wait_for(idle, 10, "the abandoned sequence to be dropped")
            done = await client(url).completions.create(model=MODEL, prompt="y", max_tokens=2)
        assert done.usage is not None and done.usage.completion_tokens == 2


async def test_n_choices_are_sampled_and_streamed_side_by_side() -> None:
    async with simulator() as url:
        api = client(url)
        chat = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=2
        )
        assert [c.index for c in chat.choices] == [0, 1]
        assert chat.usage is not None and chat.usage.completion_tokens == 6
        stream = await api.completions.create(
            model=MODEL,
            prompt="x",
            max_tokens=3,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_flags_vllm_does_not_know_are_refused_like_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parse_args([MODEL, "--enforce-eager", "--dtype=bfloat16", "--max_num_seqs", "4"])
    assert config.max_num_seqs == 4 and "--enforce-eager" in config.ignored_args
    with pytest.raises(SystemExit) as exited:
        parse_args([MODEL, "--enforce-eager", "--no-such-flag", "1"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_the_default_context_length_is_the_model_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 1024}')
    assert parse_args([str(tmp_path)]).max_model_len == 1024
    assert parse_args([str(tmp_path), "--max-model-len", "512"]).max_model_len == 512
    assert parse_args([MODEL]).max_model_len == 8192
