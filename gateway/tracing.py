"""One span per proxied request, recorded when the request ends from what its `ProxyRequest`
learnt on the way: model, project, deployment, instance, status, tokens, time to first token;
never the API key, the prompt or the answer. A client's `traceparent` makes it a child of the
client's trace. Built only when tracing is on (core.tracing): with it off the proxy holds None
and creates no span object.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from core.tracing import remote_parent

if TYPE_CHECKING:
    from gateway.proxy import ProxyRequest


class RequestTraces:
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def record(self, request: ProxyRequest) -> None:
        ended = time.time_ns()
        started = ended - int((time.perf_counter() - request.started) * 1e9)
        span = self.tracer.start_span(
            "POST " + request.engine_path.decode(),
            context=remote_parent(request.headers),
            kind=SpanKind.SERVER,
            start_time=started,
        )
        if span.is_recording():  # not when sampled out
            span.set_attributes(
                {
                    "gen_ai.request.model": request.model,
                    "inventiv.project.id": request.key.project_id,
                    "inventiv.deployment.id": request.deployment_id,
                    "inventiv.routing": str(request.routing),
                    "inventiv.stream": request.stream,
                    "http.response.status_code": request.status,
                    "gen_ai.usage.input_tokens": request.input_tokens,
                    "gen_ai.usage.output_tokens": request.output_tokens,
                }
            )
            if request.backend is not None:
                span.set_attribute("inventiv.instance.id", request.backend.instance_id)
            if request.first_chunk_at is not None:
                ttft = request.first_chunk_at - request.started
                span.set_attribute("inventiv.time_to_first_token_s", ttft)
            if request.status >= 500 or request.status == 0:  # 0: it ended on an error of ours
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=ended)
