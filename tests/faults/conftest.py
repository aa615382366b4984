"""Fault tests: the session's real PostgreSQL, Redis and Temporal frozen (SIGSTOP) for a few
seconds while clients use the API and the gateway, then resumed (SIGCONT).

The servers are shared by every test of the session: a freeze always ends in a `finally` (the
context manager's), and stays short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import httpx
import pytest

from core.settings import Settings
from tests.api.conftest import app, client  # noqa: F401 (fixtures)
from tests.conftest import Stack
from tests.gateway.conftest import (  # noqa: F401 (fixtures)
    engines,
    gateway,
    gateway_server,
    gateway_settings,
    registry,
    seeded,
    start_gateway,
)

T = TypeVar("T")
# A call must come back well within this while a dependency is frozen: generous multiples of the
# short timeouts below (and SQLAlchemy's own 2 s graceful close of a broken connection).
ANSWER_WITHIN_S = 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short dependency timeouts, so each outage is answered within seconds."""
    return settings.model_copy(
        update={
            "db_timeout_s": 1,
            "redis_timeout_s": 1,
            "temporal_rpc_timeout_s": 2,
            "outage_retry_after_s": 1,
        }
    )


Freeze = Callable[[str], AbstractContextManager[None]]


@pytest.fixture
def freeze(stack: Stack) -> Freeze:
    """`with freeze("postgres"|"redis"|"temporal"):` the embedded server, then resume it."""

    def paused(part: str) -> AbstractContextManager[None]:
        server = stack.servers.get(part)
        if server is None:
            pytest.skip(f"{part} is an external server (its URL is set): it cannot be frozen")
        return server.paused()

    return paused


async def answered(call: Awaitable[T]) -> T:
    """The call's result; fails the test when it hangs instead of answering."""
    try:
        return await asyncio.wait_for(call, ANSWER_WITHIN_S)
    except TimeoutError:
        raise AssertionError(f"no answer within {ANSWER_WITHIN_S} s: the call hangs") from None


def assert_unavailable(response: httpx.Response, dependency: str) -> None:
    """A 503 naming what is down, with when to retry."""
    assert response.status_code == 503, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["dependency"] == dependency, body
    assert body["detail"].startswith(f"{dependency} unavailable"), body
    assert int(response.headers["Retry-After"]) >= 1


async def until_available(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """What a client does with a 503: retry after Retry-After, until another answer comes."""
    for _ in range(20):
        response = await answered(call())
        if response.status_code != 503:
            return response
        await asyncio.sleep(int(response.headers["Retry-After"]))
    raise AssertionError(f"still 503 after 20 retries: {response.text}")
