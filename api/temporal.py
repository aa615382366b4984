"""The API's Temporal client: every call it makes is bounded by `temporal_rpc_timeout_s`, and a
Temporal server that is down or does not answer in time raises `DependencyUnavailableError`
(answered 503) instead of an `RPCError` (a 500) or a wait of the client's own 30 s or more.

An interceptor does it, so no call site can forget; a call that sets a shorter `rpc_timeout`
keeps it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    RPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.errors import DependencyUnavailableError
from core.settings import Settings
from core.tracing import Tracing

# What a server that is down, frozen or overloaded answers; other statuses are about the call.
OUTAGE_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,  # "Timeout expired": no answer within the rpc_timeout
        RPCStatusCode.RESOURCE_EXHAUSTED,
    }
)


class BoundedCalls(Interceptor):
    """Bounds each client call and names an outage; see the module's docstring."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _BoundedOutbound(next, self.timeout_s)


class _BoundedOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, timeout_s: float) -> None:
        super().__init__(next)
        self._timeout_s = timeout_s

    async def _bounded(self, call: Callable[[Any], Awaitable[Any]], input: Any) -> Any:
        bound = self._timeout_s
        if input.rpc_timeout is None or input.rpc_timeout.total_seconds() > bound:
            input = dataclasses.replace(input, rpc_timeout=timedelta(seconds=bound))
        # The rpc_timeout bounds one attempt; the client retries an unreachable server on its
        # own for longer, so the whole call is bounded too.
        bound = input.rpc_timeout.total_seconds()
        try:
            async with asyncio.timeout(bound):
                return await call(input)
        except TimeoutError as exc:
            raise DependencyUnavailableError("temporal", f"no answer within {bound:g} s") from exc
        except RPCTimeoutOrCancelledError as exc:
            raise DependencyUnavailableError("temporal", str(exc) or "no answer") from exc
        except RPCError as exc:
            if exc.status in OUTAGE_STATUSES:
                raise DependencyUnavailableError("temporal", exc.message) from exc
            raise


def _bounded_method(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: _BoundedOutbound, input: Any) -> Any:
        return await self._bounded(getattr(self.next, name), input)

    method.__name__ = name
    return method


# Every call that goes to the server (signal, start, update, query, describe, schedules...).
for _name, _call in list(vars(OutboundInterceptor).items()):
    if inspect.iscoroutinefunction(_call) and not _name.startswith("_"):
        setattr(_BoundedOutbound, _name, _bounded_method(_name))


async def connect(settings: Settings, tracing: Tracing | None = None) -> Client:
    interceptors: list[Interceptor] = [BoundedCalls(settings.temporal_rpc_timeout_s)]
    if tracing is not None:
        # Starting a workflow carries the request's trace in its headers (core.tracing). Loads
        # the OpenTelemetry SDK: only when tracing is on.
        from temporalio.contrib.opentelemetry import TracingInterceptor

        interceptors.append(TracingInterceptor(tracing.tracer))
    return await Client.connect(
        settings.require("temporal_address"),
        namespace=settings.temporal_namespace,
        interceptors=interceptors,
    )
