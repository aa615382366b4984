"""Project isolation on the data plane, as another tenant sees it: through two gateway
replicas, a key reaches only its own project's models; another project's model answers exactly
like an unknown one; two projects may serve the same name, each reaching its own instances; the
request log books each request to the caller's own deployment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from sqlmodel import col, select

from core.models import RequestLog
from core.wire import RoutableInstance
from tests.factories import Seeded, seed
from tests.gateway.conftest import MODEL, Engines, Registry
from tests.gateway.test_replicas import spawn_gateway  # noqa: F401 (fixture)

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def test_another_projects_key_can_neither_list_call_nor_stream_its_models(
    spawn_gateway: Callable[..., Any],  # noqa: F811
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
) -> None:
    engine_a = await engines.start("a")
    await registry.put(registry.instance(engines.servers["a"].url))  # project A's MODEL
    async with sessionmaker() as session:
        other = await seed(session, model="b-only-model")  # project B, its own key
    replicas = [await spawn_gateway(), await spawn_gateway()]
    b_headers = {"Authorization": f"Bearer {other.api_key}"}
    async with httpx.AsyncClient(headers=b_headers, timeout=30) as client:
        for replica in replicas:
            listed = await client.get(replica.url + "/v1/models")
            assert listed.status_code == 200
            assert [m["id"] for m in listed.json()["data"]] == ["b-only-model"]

            unknown = await client.post(
                replica.url + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}
            )
            plain = await client.post(replica.url + "/v1/chat/completions", json=CHAT)
            streamed = await client.post(
                replica.url + "/v1/chat/completions", json={**CHAT, "stream": True}
            )
            one = await client.get(replica.url + f"/v1/models/{MODEL}")
            for refused in (plain, streamed, one):
                assert refused.status_code == 404, refused.text
                assert refused.json()["error"]["code"] == "model_not_found"
            # No existence oracle: the same answer as for a name nobody serves.
            assert plain.text.replace(MODEL, "X") == unknown.text.replace("no-such-model", "X")
    assert engine_a.requests == []  # A's instance never saw B's traffic

    # A's own key still reaches A's model on both replicas.
    a_headers = {"Authorization": f"Bearer {seeded.api_key}"}
    async with httpx.AsyncClient(headers=a_headers, timeout=30) as client:
        for replica in replicas:
            listed = await client.get(replica.url + "/v1/models")
            assert [m["id"] for m in listed.json()["data"]] == [MODEL]
            response = await client.post(replica.url + "/v1/chat/completions", json=CHAT)
            assert response.status_code == 200, response.text
    assert len(engine_a.requests) == 2


async def test_two_projects_serving_one_name_each_reach_their_own_instances(
    spawn_gateway: Callable[..., Any],  # noqa: F811
    seeded: Seeded,
    sessionmaker: Any,
    engines: Engines,
    registry: Registry,
) -> None:
    engine_a = await engines.start("a")
    engine_b = await engines.start("b")
    async with sessionmaker() as session:
        other = await seed(session, model=MODEL)  # project B serves the same name
    await registry.put(registry.instance(engines.servers["a"].url))
    await registry.put(
        RoutableInstance(
            instance_id=str(uuid.uuid4()),
            deployment_id=str(other.deployment.id),
            project_id=str(other.project.id),
            model=MODEL,
            engine_url=engines.servers["b"].url,
        )
    )
    replicas = [await spawn_gateway(), await spawn_gateway()]
    for tenant, engine in ((seeded, engine_a), (other, engine_b)):
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            for replica in replicas:
                for stream in (False, True):
                    response = await client.post(
                        replica.url + "/v1/chat/completions", json={**CHAT, "stream": stream}
                    )
                    assert response.status_code == 200, response.text
        assert len(engine.requests) == 4
    assert len(engine_a.requests) == len(engine_b.requests) == 4

    rows: list[RequestLog] = []
    for _ in range(100):
        async with sessionmaker() as session:
            rows = list((await session.exec(select(RequestLog).order_by(col(RequestLog.id)))).all())
        if len(rows) == 8:
            break
        await asyncio.sleep(0.1)
    booked = {(r.api_key_id, r.project_id, r.deployment_id) for r in rows}
    assert booked == {
        (seeded.api_key_row.id, seeded.project.id, seeded.deployment.id),
        (other.api_key_row.id, other.project.id, other.deployment.id),
    }
