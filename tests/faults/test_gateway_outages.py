"""The gateway while PostgreSQL, Redis or Temporal is frozen: traffic to a ready instance goes on
(the key was checked before, request logs wait in the buffer), and the logs of the requests
served during the outage reach the database once it is back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import func, select

from core.models import RequestLog
from tests.factories import Seeded
from tests.faults.conftest import Freeze, answered
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway, serving
from tests.gateway.test_api import wait_for

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
DURING = 3


async def logged(sessionmaker: Any) -> int:
    async with sessionmaker() as session:
        return int((await session.exec(select(func.count()).select_from(RequestLog))).one())


@pytest.mark.parametrize("part", ["postgres", "redis", "temporal"])
async def test_ready_instances_keep_serving_while_a_dependency_is_frozen(
    part: str,
    gateway: RunningGateway,
    seeded: Seeded,
    engines: Engines,
    registry: Registry,
    sessionmaker: Any,
    freeze: Freeze,
) -> None:
    await engines.start("ready")
    await registry.put(registry.instance(engines.servers["ready"].url))
    await wait_for(lambda: len(serving(gateway.app, MODEL)) == 1)
    async with gateway.client(seeded.api_key) as client:
        before = await client.post("/v1/chat/completions", json=CHAT)
        assert before.status_code == 200, before.text
        with freeze(part):
            during = [
                await answered(client.post("/v1/chat/completions", json=CHAT))
                for _ in range(DURING)
            ]
    assert [r.status_code for r in during] == [200] * DURING, [r.text for r in during]

    deadline = asyncio.get_running_loop().time() + 30
    while (count := await logged(sessionmaker)) < 1 + DURING:
        assert asyncio.get_running_loop().time() < deadline, f"{count} request logs written"
        await asyncio.sleep(0.2)
    assert count == 1 + DURING
