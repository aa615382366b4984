"""The simulator held to the real engine: the same requests to both, compared by status code,
JSON keys and value types, stream chunk shapes, the usage chunk, and metric names with labels.

Known differences (nothing the gateway or the agent depends on):
- the text and the token counts: random weights and another tokenizer (values are not compared);
- without max_tokens, vLLM's random-weight model writes up to the context limit; the simulator
  "ends its answer" after --default-max-tokens with finish_reason "stop" (every case here sets
  max_tokens);
- a list of several prompts: vLLM answers each as a choice, the simulator refuses it (400);
- request-validation errors (a field of the wrong type, a missing field): same status, type
  ("Bad Request") and param, but pydantic's wording of the message differs;
- `stream_options.continuous_usage_stats` with `include_usage`: vLLM adds usage to every chunk,
  the simulator only sends the final usage chunk;
- a failure in the middle of a stream cannot be provoked in vLLM from outside; the simulator's
  in-band error event copies vLLM's code (`create_streaming_error_response`, then `[DONE]`);
- metrics: the simulator exposes a subset of vLLM's (SIM_ONLY_METRICS must stay empty);
- /version and /v1/models' permission id are the simulator's own values.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.sim.config import parse_args
from agent.sim.server import create_app
from tests.agent.helpers import serving
from tests.engine.conftest import ENGINE_KEY, SERVED, TINY_MODEL, RealEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]
KEYED = {"Authorization": f"Bearer {ENGINE_KEY}"}


@dataclass
class Case:
    name: str
    path: str
    body: dict[str, Any]
    same_message: bool = field(default=True)  # errors: vLLM's wording expected word for word


CASES = [
    Case("completion", COMPLETIONS, {"prompt": "hello there", "max_tokens": 4}),
    Case("chat", CHAT, {"messages": MESSAGES, "max_tokens": 4}),
    Case("completion n=2", COMPLETIONS, {"prompt": "hello", "max_tokens": 3, "n": 2}),
    Case("chat n=2", CHAT, {"messages": MESSAGES, "max_tokens": 3, "n": 2}),
    Case("completion stream", COMPLETIONS, {"prompt": "hello", "max_tokens": 3, "stream": True}),
    Case(
        "completion stream with usage",
        COMPLETIONS,
        {
            "prompt": "hello",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    Case("chat stream", CHAT, {"messages": MESSAGES, "max_tokens": 3, "stream": True}),
    Case(
        "chat stream with usage",
        CHAT,
        {
            "messages": MESSAGES,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    Case(
        "chat stream, empty stream_options: no usage chunk",
        CHAT,
        {"messages": MESSAGES, "max_tokens": 3, "stream": True, "stream_options": {}},
    ),
    Case(
        "chat stream, continuous_usage_stats alone: no usage chunk",
        CHAT,
        {
            "messages": MESSAGES,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"continuous_usage_stats": True},
        },
    ),
    Case("chat stream n=2", CHAT, {"messages": MESSAGES, "max_tokens": 2, "n": 2, "stream": True}),
    Case("unknown model", COMPLETIONS, {"model": "nope", "prompt": "x", "max_tokens": 1}),
    Case("prompt too long", COMPLETIONS, {"prompt": "word " * 1100, "max_tokens": 1}),
    Case("answer cut to the context", COMPLETIONS, {"prompt": "word " * 1020, "max_tokens": 50}),
    # 1024 tokens in both tokenizers (a trailing space would be one more token in vLLM's)
    Case(
        "prompt fills the context",
        COMPLETIONS,
        {"prompt": "word " * 1023 + "word", "max_tokens": 5},
    ),
    Case("max_tokens below 1", COMPLETIONS, {"prompt": "x", "max_tokens": -3}),
    Case("negative temperature", COMPLETIONS, {"prompt": "x", "max_tokens": 1, "temperature": -1}),
    Case("n=0", COMPLETIONS, {"prompt": "x", "max_tokens": 1, "n": 0}),
    Case(
        "stream_options without stream",
        COMPLETIONS,
        {"prompt": "x", "max_tokens": 1, "stream_options": {"include_usage": True}},
    ),
    Case("empty prompt", COMPLETIONS, {"prompt": "", "max_tokens": 1}),
    Case("empty conversation", CHAT, {"messages": [], "max_tokens": 1}),
    Case("max_tokens not a number", COMPLETIONS, {"prompt": "x", "max_tokens": "many"}, False),
    Case("no messages", CHAT, {"max_tokens": 1}, False),
    Case("model not a string", CHAT, {"model": 5, "messages": MESSAGES}, False),
]

# Metric names the simulator has and vLLM 0.32 has not: only its modelled GPU busy time, which
# the agent reports as the utilisation of a machine with no real GPU (nothing else may appear).
SIM_ONLY_METRICS = {"inventiv_sim_busy_seconds_total", "inventiv_sim_busy_seconds_created"}


def shape(value: Any) -> Any:
    """The value with every leaf replaced by its JSON type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def stream_shape(text: str, interleaved: bool) -> Any:
    """The chunks' shapes, runs of the same shape counted once; with n > 1 the choices
    interleave in any order, so only which shapes occur is compared."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", text
    shapes = [json.dumps(shape(json.loads(event))) for event in events[:-1]]
    if interleaved:
        return sorted(set(shapes))
    collapsed = [s for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]]
    return [json.loads(s) for s in collapsed]


@dataclass
class Answer:
    status: int
    body: Any


async def ask(http: httpx.AsyncClient, case: Case) -> Answer:
    body = {"model": SERVED, **case.body}
    response = await http.post(case.path, json=body)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return Answer(response.status_code, stream_shape(response.text, body.get("n", 1) > 1))
    return Answer(response.status_code, response.json())


@pytest.fixture(scope="module")
async def simulator_url() -> AsyncIterator[str]:
    config = parse_args([str(TINY_MODEL), "--served-model-name", SERVED, "--api-key", ENGINE_KEY])
    async with serving(create_app(config)) as url:
        yield url


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_the_simulator_answers_as_vllm_does(
    case: Case, real_engine: RealEngine, simulator_url: str
) -> None:
    async with (
        httpx.AsyncClient(base_url=real_engine.url, timeout=60, headers=KEYED) as vllm,
        httpx.AsyncClient(base_url=simulator_url, timeout=60, headers=KEYED) as sim,
    ):
        real, simulated = await ask(vllm, case), await ask(sim, case)
    assert simulated.status == real.status, (real.body, simulated.body)
    if isinstance(real.body, list):  # a stream
        assert simulated.body == real.body
        return
    assert shape(simulated.body) == shape(real.body), (real.body, simulated.body)
    if real.status >= 400:
        real_error, sim_error = real.body["error"], simulated.body["error"]
        assert (sim_error["type"], sim_error["param"], sim_error["code"]) == (
            real_error["type"],
            real_error["param"],
            real_error["code"],
        )
        if case.same_message:
            assert sim_error["message"] == real_error["message"]
    elif "usage" in real.body:
        assert [c["finish_reason"] for c in simulated.body["choices"]] == [
            c["finish_reason"] for c in real.body["choices"]
        ]


def metric_labels(text: str) -> dict[str, set[frozenset[str]]]:
    found: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return found


async def test_the_simulators_endpoints_and_metrics_are_vllms(
    real_engine: RealEngine, simulator_url: str
) -> None:
    answers = {}
    for name, url in (("vllm", real_engine.url), ("sim", simulator_url)):
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=KEYED) as http:
            # some traffic first, so that every series exists
            await http.post(COMPLETIONS, json={"model": SERVED, "prompt": "x", "max_tokens": 2})
            answers[name] = {
                "health": (await http.get("/health")).status_code,
                "readyz": (await http.get("/readyz")).status_code,
                "models": shape((await http.get("/v1/models")).json()),
                "metrics": metric_labels((await http.get("/metrics")).text),
            }
    real, sim = answers["vllm"], answers["sim"]
    assert (sim["health"], sim["readyz"]) == (real["health"], real["readyz"]) == (200, 404)
    assert sim["models"] == real["models"]
    assert set(sim["metrics"]) - set(real["metrics"]) == SIM_ONLY_METRICS
    for name, label_sets in sim["metrics"].items():
        if name in real["metrics"]:
            assert label_sets == real["metrics"][name], name


async def test_the_simulator_guards_its_api_key_as_vllm_does(
    real_engine: RealEngine, simulator_url: str
) -> None:
    """Both started with the same --api-key: the same paths are guarded, with the same answer,
    whether the key is missing, wrong or sent in another scheme."""
    keys = {
        "none": {},
        "wrong": {"Authorization": "Bearer " + ENGINE_KEY[::-1]},
        "not bearer": {"Authorization": "Basic " + ENGINE_KEY},
        "right": KEYED,
    }
    probes = [("GET", "/v1/models"), ("POST", COMPLETIONS), ("GET", "/health"), ("GET", "/metrics")]
    answers: dict[str, list[tuple[str, str, int, Any]]] = {}
    for name, url in (("vllm", real_engine.url), ("sim", simulator_url)):
        found = answers.setdefault(name, [])
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for key_name, headers in keys.items():
                for method, path in probes:
                    body = {"model": SERVED, "prompt": "x", "max_tokens": 1}
                    response = await http.request(
                        method, path, headers=headers, json=body if method == "POST" else None
                    )
                    refused = response.json() if response.status_code == 401 else None
                    found.append((key_name, path, response.status_code, refused))
    assert answers["sim"] == answers["vllm"]
    assert ("none", COMPLETIONS, 401, {"error": "Unauthorized"}) in answers["vllm"]
