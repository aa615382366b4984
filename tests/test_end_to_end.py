"""One request end to end: provision through the API, wait for ready, chat through the gateway
with the official OpenAI client (plain and streamed), terminate, and read the history back."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from sqlmodel import select

from api.app import create_app
from core.models import RequestLog
from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.workflows.helpers import running_worker

MODEL = "e2e-model"


async def wait_for_state(api: httpx.AsyncClient, instance_id: str, state: str) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
        if detail["state"] == state:
            return detail  # type: ignore[no-any-return]
        await asyncio.sleep(0.3)
    raise AssertionError(f"instance {instance_id} stuck in {detail['state']}: {detail}")


async def test_provision_chat_stream_terminate(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, model=MODEL, engine_args={"model-load-delay-s": 0.2})
    api_server = RunningServer(create_app(settings), settings.api_port)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    async with running_worker(settings, temporal_client):
        await api_server.start()
        await gateway_server.start()
        try:
            async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as api:
                login = await api.post(
                    "/api/v1/auth/login",
                    json={"email": seeded.user.email, "password": seeded.password},
                )
                assert login.status_code == 200
                assert "httponly" in login.headers["set-cookie"].lower()
                api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                api.cookies.clear()

                created = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
                assert created.status_code == 202, created.text
                instance_id = created.json()["id"]
                ready = await wait_for_state(api, instance_id, "ready")
                assert ready["progress"] == 100

                client = openai.AsyncOpenAI(
                    api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
                )
                models = await client.models.list()
                assert MODEL in [m.id for m in models.data]
                reply = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hello there"}]
                )
                assert reply.choices[0].message.content
                assert reply.usage is not None and reply.usage.completion_tokens > 0
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Stream please"}],
                    stream=True,
                    max_tokens=8,
                )
                pieces = [c.choices[0].delta.content async for c in stream if c.choices]
                assert len([p for p in pieces if p]) >= 2, pieces

                # Errors a client will meet, in OpenAI's format, none of them a 500.
                with pytest.raises(openai.AuthenticationError):
                    await openai.AsyncOpenAI(
                        api_key="sk-inv-wrong", base_url=f"{gateway_server.url}/v1"
                    ).models.list()
                with pytest.raises(openai.NotFoundError):
                    await client.chat.completions.create(
                        model="no-such-model", messages=[{"role": "user", "content": "x"}]
                    )
                async with httpx.AsyncClient(base_url=gateway_server.url) as raw:
                    bad = await raw.post(
                        "/v1/chat/completions",
                        content=b"{not json",
                        headers={"Authorization": f"Bearer {seeded.api_key}"},
                    )
                assert bad.status_code == 400 and "error" in bad.json()

                deleted = await api.delete(f"/api/v1/instances/{instance_id}")
                assert deleted.status_code == 202
                done = await wait_for_state(api, instance_id, "terminated")
                assert [h["to_state"] for h in done["history"]] == [
                    "booting", "ready", "draining", "terminating", "terminated",
                ]  # fmt: skip
                assert done["termination_reason"] == "user_request"
                assert done["last_heartbeat_at"] is not None, "the agent's heartbeats arrived"
                again = await api.delete(f"/api/v1/instances/{instance_id}")
                assert again.status_code == 409
        finally:
            await gateway_server.stop()
            await api_server.stop()
    async with sessionmaker() as session:
        logs = (await session.exec(select(RequestLog))).all()
    ok = [r for r in logs if r.status_code == 200 and r.model == MODEL]
    assert len(ok) == 2 and {r.streamed for r in ok} == {True, False}
    assert all(r.output_tokens > 0 and r.input_tokens > 0 for r in ok)
