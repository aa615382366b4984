"""A tunnelled machine through the real lifecycle workflow (Temporal, PostgreSQL, Redis, the
gateway, the agent as a process), with simulated time for the owner's slot: its credential
rotates in-band while completions stream through it, none of them dropped; when its slot is
about to end the tunnel endpoint drains the instance, which terminates before the slot ends and
releases the machine (engine stopped, never powered off), and no new instance is placed there.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from activities.providers.tunnel.adapter import TunnelCompute
from api.app import create_app
from core.models import InstanceAction, Machine, TerminationReason, utcnow
from core.redis_keys import ROUTING_REGISTRY
from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.tunnel.helpers import connected_machine, eventually, tunnel_settings
from tests.workflows.helpers import running_worker
from workflows.client import create_instance, drain_if_accepted

MODEL = "slot-model"
DAY = 24 * 3600


@dataclass
class SimulatedClock:
    """Real time moved by `offset`: the test jumps to just before the slot's end."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


async def _state(api: httpx.AsyncClient, instance_id: str, state: str, timeout: float) -> dict:
    detail: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal detail
        detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
        return detail["state"] == state

    try:
        await eventually(reached, timeout, f"instance {instance_id} {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last: {detail})") from None
    return detail


async def test_rotation_drops_no_request_and_the_slot_end_drains_the_machine(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a credential of 2 days is rotated when less than 16 h are left: not at connection (1 day)
    tunnel = tunnel_settings(monkeypatch, credential_ttl_s=2 * DAY, drain_lead_s=600)
    clock = SimulatedClock()
    now = utcnow()
    # the owner shares the machine every day from an hour ago until two hours from now (UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    slot = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    slot_ends_at = end.replace(second=0, microsecond=0)
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="tunnel", instance_type="tunnel", model=MODEL,
            engine_args={"model-load-delay-s": 0.2},
        )  # fmt: skip
    assert settings.database_url
    compute = TunnelCompute(tunnel, settings.database_url, clock=clock)
    api_server = RunningServer(create_app(settings), settings.api_port)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    drained: list[str] = []

    async def drain(workflow_id: str) -> bool:  # as `inventiv tunnel` does
        drained.append(workflow_id)
        return await drain_if_accepted(temporal_client, workflow_id, TerminationReason.scale_down)

    async with (
        running_worker(settings, temporal_client, {"tunnel": compute}),
        connected_machine(
            settings, tunnel, sessionmaker, tmp_path / "machine", drain=drain, clock=clock,
            slots=[slot],
        ) as machine,
    ):  # fmt: skip
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
                await _state(api, instance_id, "ready", 90)

                # -- rotation while completions stream through the tunnel
                client = openai.AsyncOpenAI(
                    api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
                )
                async with sessionmaker() as session:
                    before = await session.get(Machine, machine.machine_id)
                    assert before is not None
                    old_hash = before.credential_hash
                rotated = asyncio.Event()
                results: list[str] = []

                async def keep_asking() -> None:
                    while not rotated.is_set():
                        stream = await client.chat.completions.create(
                            model=MODEL, stream=True, max_tokens=16,
                            messages=[{"role": "user", "content": "during the rotation"}],
                        )  # fmt: skip
                        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
                        results.append("".join(p or "" for p in pieces))

                askers = [asyncio.create_task(keep_asking()) for _ in range(4)]
                await asyncio.sleep(0.5)  # requests in flight before the rotation is due
                async with sessionmaker() as session:  # 10 h left: the next sync rotates
                    await session.execute(
                        update(Machine)
                        .where(col(Machine.id) == machine.machine_id)
                        .values(credential_expires_at=utcnow() + timedelta(hours=10))
                    )
                    await session.commit()

                async def credential_changed() -> bool:
                    async with sessionmaker() as session:
                        row = await session.get(Machine, machine.machine_id)
                    return row is not None and row.credential_hash != old_hash

                await eventually(credential_changed, 15, "the credential rotated")
                await asyncio.sleep(1.0)  # and requests go on after it
                rotated.set()
                await asyncio.gather(*askers)  # any dropped request raises here
                assert len(results) >= 8 and all(results), results
                async with sessionmaker() as session:
                    row = await session.get(Machine, machine.machine_id)
                    assert row is not None
                    assert row.credential_expires_at > utcnow() + timedelta(days=1)
                # the tunnel drops: the machine comes back with its new credential (the old
                # one no longer matches)
                await machine.endpoint.hub.connections[machine.machine_id].ws.close(1001)
                await eventually(
                    lambda: _reconnected(sessionmaker, machine.machine_id), 30, "reconnected"
                )
                await eventually(lambda: _serves(client), 30, "completions after the reconnection")

                # -- the slot is about to end (simulated time): drained, terminated, released
                assert drained == []
                clock.offset = slot_ends_at - timedelta(minutes=5) - utcnow()
                began = time.monotonic()
                ended = await _state(api, instance_id, "terminated", 60)
                assert clock() < slot_ends_at  # free before the owner's slot ends
                log = [(a["step"], a["detail"], a["started_at"]) for a in ended["actions"]]
                assert ended["termination_reason"] == TerminationReason.scale_down, log
                assert drained == [created.json()["workflow_id"]]
                async with sessionmaker() as session:
                    steps = (
                        await session.scalars(
                            select(col(InstanceAction.step)).where(
                                col(InstanceAction.instance_id) == instance_id
                            )
                        )
                    ).all()
                assert "drain" in steps and "delete_server" in steps, steps

                async def released() -> bool:
                    async with sessionmaker() as session:
                        row = await session.get(Machine, machine.machine_id)
                    return row is not None and row.claimed_by is None and not row.running_instance

                await eventually(released, 20, "the machine released and its engine stopped")
                assert machine.process.poll() is None  # never powered off
                assert time.monotonic() - began < 60

                listed = (await api.get(f"/api/v1/machines/{machine.machine_id}")).json()
                assert listed["connected"]
                # -- no new work placed: the provider finds no machine available now
                again = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
                assert again.status_code == 202, again.text
                failed = await _state(api, again.json()["id"], "terminated", 60)
                assert failed["termination_reason"] == "startup_error"
                assert "available now" in (failed["error"] or ""), failed
        finally:
            await gateway_server.stop()
            await api_server.stop()
            await compute.close()


async def _reconnected(sessionmaker: Any, machine_id: Any) -> bool:
    async with sessionmaker() as session:
        row = await session.get(Machine, machine_id)
    return (
        row is not None
        and row.disconnected_at is not None
        and (row.connected_at is not None and row.connected_at > row.disconnected_at)
    )


async def _serves(client: openai.AsyncOpenAI) -> bool:
    try:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "still there?"}]
        )
    except openai.APIError:
        return False
    return bool(reply.choices[0].message.content)


async def test_a_tunnel_lost_past_the_health_deadline_takes_the_instance_out_of_routing(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    redis_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No setting of its own: the health loop is the deadline. Heartbeats stop with the tunnel
    (the endpoint relays them); once the last is INVENTIV_HEARTBEAT_FRESH_S old, each check asks
    the agent through the relay, which answers 503; INVENTIV_UNHEALTHY_THRESHOLD failures in a
    row, INVENTIV_HEALTH_INTERVAL_S apart, take the instance out of routing and replace it."""
    settings = settings.model_copy(update={"heartbeat_fresh_s": 3, "unhealthy_threshold": 3})
    deadline_s = settings.heartbeat_fresh_s + settings.unhealthy_threshold * (
        settings.health_interval_s
    )
    tunnel = tunnel_settings(monkeypatch)
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="tunnel", instance_type="tunnel", model=MODEL,
            engine_args={"model-load-delay-s": 0.2},
        )  # fmt: skip
    assert settings.database_url
    compute = TunnelCompute(tunnel, settings.database_url)
    async with (
        running_worker(settings, temporal_client, {"tunnel": compute}),
        connected_machine(settings, tunnel, sessionmaker, tmp_path / "machine") as machine,
    ):
        try:
            async with sessionmaker() as session:
                instance = await create_instance(
                    session, temporal_client, settings.task_queue, deployment=seeded.deployment
                )

            async def routable() -> bool:
                return bool(await redis_client.hexists(ROUTING_REGISTRY, str(instance.id)))

            await eventually(routable, 90, "the instance in routing")
            lost_at = time.monotonic()
            await machine.endpoint.stop()  # the tunnel (and its relay) is gone

            async def out_of_routing() -> bool:
                return not await routable()

            took = await eventually(out_of_routing, deadline_s + 15, "out of routing")
            assert took <= deadline_s + 5, (took, deadline_s)
            assert time.monotonic() - lost_at >= settings.heartbeat_fresh_s - 1

            details: list[str | None] = []

            async def reason_logged() -> bool:
                nonlocal details
                async with sessionmaker() as session:
                    details = list(
                        await session.scalars(
                            select(col(InstanceAction.detail)).where(
                                col(InstanceAction.instance_id) == instance.id,
                                col(InstanceAction.step) == "unhealthy",
                            )
                        )
                    )
                return bool(details)

            # record_unhealthy takes the instance out of routing first, then logs why (the
            # removal must not wait on PostgreSQL): the row may land just after the removal.
            await eventually(reason_logged, 10, "the unhealthy action logged")
            assert "failed health checks" in (details[0] or ""), details
        finally:
            await compute.close()
