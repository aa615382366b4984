"""Traces as a collector sees them: a real OTLP/HTTP receiver on loopback gets the spans of the
API, the worker and the gateway (run as `inventiv api|worker|gateway` run them, in this
process) while an instance is provisioned through the API and a chat goes through the gateway.
With no endpoint configured, the same processes load no exporter at all."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from api.app import create_app
from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from workers.worker import run_worker

ROOT = Path(__file__).resolve().parents[2]
MODEL = "traced-model"
PROMPT = "a prompt that must stay out of traces"
# A client's own trace, continued by the gateway (W3C traceparent, sampled).
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """A minimal OTLP/HTTP trace collector: POST /v1/traces with a protobuf body."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exports = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, request: ExportTraceServiceRequest) -> None:
        self.exports += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            resource["service.name"],
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes},
                        )
                    )


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


async def test_one_trace_from_the_api_request_through_workflow_and_activities_and_gateway_spans(
    settings: Settings, sessionmaker: Any, receiver: OtlpReceiver, monkeypatch: Any
) -> None:
    monkeypatch.setenv("INVENTIV_OTLP_ENDPOINT", receiver.url)
    async with sessionmaker() as session:
        seeded = await seed(session, model=MODEL, engine_args={"model-load-delay-s": 0.2})
    stop_worker = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop_worker))
    api_server = RunningServer(create_app(settings), settings.api_port)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    await api_server.start()
    await gateway_server.start()
    try:
        async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as api:
            login = await api.post(
                "/api/v1/auth/login",
                json={"email": seeded.user.email, "password": seeded.password},
            )
            api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            api.cookies.clear()
            created = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
            assert created.status_code == 202, created.text
            instance_id = created.json()["id"]
            deadline = time.monotonic() + 90
            while (await api.get(f"/api/v1/instances/{instance_id}")).json()["state"] != "ready":
                assert time.monotonic() < deadline, "the instance did not become ready"
                assert not worker.done(), worker
                await asyncio.sleep(0.3)

        client = openai.AsyncOpenAI(
            api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
        )
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=5
        )
        assert answer.choices[0].message.content
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=5,
            stream=True,
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        assert [chunk async for chunk in stream]
    finally:
        # Each process exports what it still holds when it stops.
        await gateway_server.stop()
        await api_server.stop()
        stop_worker.set()
        await asyncio.wait_for(worker, 30)

    spans = receiver.spans
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert services == {"inventiv-api", "inventiv-worker", "inventiv-gateway"}, services

    # The API request that created the instance roots one trace...
    (request,) = [
        s
        for s in spans
        if s.service == "inventiv-api"
        and s.name == "POST /api/v1/deployments/{deployment_id}/instances"
    ]
    assert request.attributes["http.response.status_code"] == 202
    assert request.parent_id == ""
    trace = [s for s in spans if s.trace_id == request.trace_id]
    names = {(s.service, s.name) for s in trace}
    # ...which the workflow start, the workflow and its activities on the worker all join.
    assert ("inventiv-api", "StartWorkflow:InstanceWorkflow") in names, names
    assert ("inventiv-worker", "RunWorkflow:InstanceWorkflow") in names, names
    activities = [s for s in trace if s.name.startswith("RunActivity:")]
    assert {s.service for s in activities} == {"inventiv-worker"}
    assert len({s.name for s in activities}) >= 3, sorted(s.name for s in activities)
    for span in activities:
        assert request in ancestors(span, by_id), span.name
        assert span.attributes["temporalWorkflowID"] == f"instance-{instance_id}"

    # One gateway span per proxied request, with what it did.
    proxied = [s for s in spans if s.service == "inventiv-gateway"]
    assert [s.name for s in proxied] == ["POST /v1/chat/completions"] * 2
    for span in proxied:
        assert span.attributes["gen_ai.request.model"] == MODEL
        assert span.attributes["inventiv.deployment.id"] == str(seeded.deployment.id)
        assert span.attributes["inventiv.instance.id"] == instance_id
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["gen_ai.usage.output_tokens"] > 0
        assert span.attributes["gen_ai.usage.input_tokens"] > 0
    plain, streamed = sorted(proxied, key=lambda s: s.attributes["inventiv.stream"])
    assert plain.parent_id == "" and plain.trace_id != CLIENT_TRACE
    # The client's traceparent makes the gateway's span a child of the client's span.
    assert (streamed.trace_id, streamed.parent_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert streamed.attributes["inventiv.time_to_first_token_s"] > 0

    # No secret and no prompt in any span.
    everything = json.dumps([[s.name, s.attributes] for s in spans])
    for secret in (seeded.api_key, seeded.password, PROMPT, settings.secret_key):
        assert secret not in everything


SERVICES_WITH_TRACING_OFF = """
import asyncio, json, sys
from api.app import create_app
from core.settings import Settings
from gateway.app import create_app as create_gateway
from workers.worker import run_worker

async def main():
    settings = Settings(**json.loads(sys.argv[1]))
    app = create_app(settings)
    gateway = create_gateway(settings)
    stop = asyncio.Event()
    stop.set()
    async with app.router.lifespan_context(app):
        await gateway.startup()
        await gateway.shutdown()
        await run_worker(settings, stop)
    # The SDK's tracing and any exporter (redis-py loads the SDK's metrics on its own).
    tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
    loaded = [m for m in sys.modules if m.startswith(tracing)]
    print(json.dumps(sorted(loaded)))

asyncio.run(main())
"""


def _loaded_otel_modules(settings: Settings, env: dict[str, str]) -> list[str]:
    arguments = settings.model_dump(mode="json")
    done = subprocess.run(
        [sys.executable, "-c", SERVICES_WITH_TRACING_OFF, json.dumps(arguments)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


async def test_without_an_endpoint_no_service_loads_an_exporter(
    settings: Settings, receiver: OtlpReceiver
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_")}
    off = await asyncio.to_thread(_loaded_otel_modules, settings, base)
    assert off == []
    # The same processes with an endpoint: the check above can fail.
    on = await asyncio.to_thread(
        _loaded_otel_modules, settings, {**base, "INVENTIV_OTLP_ENDPOINT": receiver.url}
    )
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in on
    assert receiver.exports > 0  # the worker's reconciler start was traced and exported
