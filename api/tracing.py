"""One span per API request, current while the request runs, so the workflow a handler starts
(Temporal's tracing interceptor on the API's client) joins the request's trace. Added only when
tracing is on (core.tracing). The span is named by the route's template, never the raw path, and
carries no header, query or body.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.tracing import remote_parent


class RequestSpans:
    """Pure ASGI middleware (no copy of the body, nothing between the handler and its stream)."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        with self.tracer.start_as_current_span(
            method,
            context=remote_parent(scope["headers"]),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                template = route_template(scope)
                if template is not None:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))


def route_template(scope: Scope) -> str | None:
    """The matched route's path template, prefixes included: the router puts the route in the
    scope on its way in, but a route of a router included under a prefix keeps its own path,
    so the prefix is taken from the request path's leading segments (prefixes here have no
    parameters)."""
    template: str | None = getattr(scope.get("route"), "path", None)
    if template is None or ":path}" in template:
        return template
    segments = scope["path"].split("/")
    prefix = len(segments) - 1 - template.count("/")
    return "/".join(segments[: prefix + 1]) + template if prefix > 0 else template
