"""OpenTelemetry traces: one tracer provider per process, exporting spans over OTLP/HTTP to
`INVENTIV_OTLP_ENDPOINT`; with no endpoint there is no provider, no exporter and no span.

Who makes which spans (docs/architecture.md, Flows): the API one per request (api.tracing),
Temporal's `TracingInterceptor` on the API's and the worker's clients the workflow and activity
spans (the trace context travels in the workflow's headers), the gateway one per proxied request
(gateway.tracing). The SDK's tracing and the exporter are imported only when tracing is on.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.observability import ObservabilitySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

_W3C = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Tracing:
    """A process's tracer and the provider that exports what it records."""

    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Export what is still buffered, then stop (blocks up to the exporter's timeout)."""
        self.provider.shutdown()


def start_tracing(settings: ObservabilitySettings, service: str) -> Tracing | None:
    """The tracer of `service` (`inventiv-api`, ...), or None when no endpoint is configured."""
    if settings.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {"service.name": service, "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"}
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces",
        headers=_headers(settings),
    )
    # Spans are queued and exported from the processor's own thread, never on the event loop.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, provider.get_tracer("inventiv"))


def _headers(settings: ObservabilitySettings) -> dict[str, str]:
    if settings.otlp_headers is None:
        return {}
    pairs = (item.partition("=") for item in settings.otlp_headers.get_secret_value().split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


def remote_parent(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The trace a caller's W3C `traceparent` header continues, if it sent one."""
    for name, value in headers:
        if name == b"traceparent":
            return _W3C.extract({"traceparent": value.decode("latin-1")})
    return None
