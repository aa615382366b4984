"""A machine behind NAT, end to end: it enrols with a one-time token, dials out (no listening
socket of its own), becomes ready through the lifecycle workflow (real Temporal, PostgreSQL,
Redis), serves plain and streamed completions through the real gateway via the tunnel, survives
the tunnel endpoint restarting, is released at termination, and is cut off within 5 s when
revoked. A reused token is refused with a clear message."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from activities.providers.tunnel.adapter import TunnelCompute
from api.app import create_app
from core.models import Machine
from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.tunnel.helpers import eventually, listening_sockets, start_machine, tunnel_settings
from tests.workflows.helpers import running_worker
from tunnel.server import TunnelServer

MODEL = "nat-model"


async def _state(api: httpx.AsyncClient, instance_id: str, state: str, timeout: float) -> dict:
    detail: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal detail
        detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
        return detail["state"] == state

    await eventually(reached, timeout, f"instance {instance_id} {state} (last: {detail})")
    return detail


async def _chat(client: openai.AsyncOpenAI) -> tuple[str, list[str]]:
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello through the tunnel"}]
    )
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
        max_tokens=8,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return reply.choices[0].message.content or "", pieces


async def test_machine_behind_nat_joins_serves_and_is_cut_off(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tunnel = tunnel_settings(monkeypatch)
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="tunnel", instance_type="tunnel", model=MODEL,
            engine_args={"model-load-delay-s": 0.2},
        )  # fmt: skip
    assert settings.database_url
    compute = TunnelCompute(tunnel, settings.database_url)
    api_server = RunningServer(create_app(settings), settings.api_port)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    endpoint = TunnelServer(settings, tunnel)
    machine_dir = tmp_path / "machine"
    machine = None
    async with running_worker(settings, temporal_client, {"tunnel": compute}):
        await api_server.start()
        await gateway_server.start()
        await endpoint.start()
        try:
            async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as api:
                login = await api.post(
                    "/api/v1/auth/login",
                    json={"email": seeded.user.email, "password": seeded.password},
                )
                api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                api.cookies.clear()

                enrolment = await api.post(
                    "/api/v1/machines/enrolments",
                    json={"name": "desk-gpu", "project_id": str(seeded.project.id)},
                )
                assert enrolment.status_code == 201, enrolment.text
                token = enrolment.json()["token"]
                assert enrolment.json()["command"] == (
                    f"python -m agent join --control-plane {settings.api_url} --token {token}"
                )

                machine = start_machine(
                    machine_dir, "join", "--control-plane", settings.api_url, "--token", token
                )

                async def connected() -> bool:
                    listed = (await api.get("/api/v1/machines")).json()
                    return bool(listed) and listed[0]["connected"]

                await eventually(connected, 30, "the machine connected")
                assert listening_sockets(machine.pid) == []

                # the token worked once: a second machine with it is refused, and told why
                again = start_machine(
                    tmp_path / "other", "join", "--control-plane", settings.api_url,
                    "--token", token,
                )  # fmt: skip
                assert await asyncio.to_thread(again.wait, 30) == 2
                refusal = (tmp_path / "other.log").read_text()
                assert "already used" in refusal and token not in refusal

                created = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
                assert created.status_code == 202, created.text
                instance_id = created.json()["id"]
                ready = await _state(api, instance_id, "ready", 90)
                relay = f"{tunnel.relay_base}/m/"
                assert ready["engine_url"].startswith(relay)  # the record says: via the tunnel
                assert ready["agent_url"].startswith(relay)
                assert ready["agent_integrity_ok"] is True

                client = openai.AsyncOpenAI(
                    api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
                )
                text, pieces = await _chat(client)
                assert text
                assert len([p for p in pieces if p]) >= 2, pieces
                assert listening_sockets(machine.pid) == []

                # the tunnel drops (its endpoint restarts): requests fail cleanly meanwhile, and
                # the machine reconnects by itself and serves again
                await endpoint.stop()
                with pytest.raises(openai.APIStatusError) as failed:
                    await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "anyone?"}]
                    )
                assert failed.value.status_code in (502, 503)
                endpoint = TunnelServer(settings, tunnel)
                await endpoint.start()
                await eventually(connected, 30, "the machine reconnected")

                async def serves_again() -> bool:
                    try:
                        return bool((await _chat(client))[0])
                    except openai.APIError:
                        return False

                await eventually(serves_again, 45, "completions through the new tunnel")
                async with sessionmaker() as session:
                    row = await session.get(
                        Machine, (await api.get("/api/v1/machines")).json()[0]["id"]
                    )
                    assert row is not None and row.claimed_by is not None

                async def heartbeat_arrived() -> bool:
                    detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
                    return detail["last_heartbeat_at"] is not None

                await eventually(heartbeat_arrived, 20, "a heartbeat relayed by the tunnel")

                deleted = await api.delete(f"/api/v1/instances/{instance_id}")
                assert deleted.status_code == 202
                await _state(api, instance_id, "terminated", 60)
                listed = (await api.get("/api/v1/machines")).json()[0]
                assert listed["claimed_by"] is None and listed["connected"]  # released, not off
                assert machine.poll() is None

                revoked_at = time.monotonic()
                revoked = await api.post(f"/api/v1/machines/{listed['id']}/revoke")
                assert revoked.status_code == 200
                assert await asyncio.to_thread(machine.wait, 5) == 3
                assert time.monotonic() - revoked_at < 5
                assert "revoked" in (tmp_path / "machine.log").read_text()
        finally:
            if machine is not None and machine.poll() is None:
                machine.terminate()
                await asyncio.to_thread(machine.wait, 20)
            await endpoint.stop()
            await gateway_server.stop()
            await api_server.stop()
            await compute.close()
