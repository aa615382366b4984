"""The heartbeat loop outlives failures: a probe that raises, a control plane that refuses."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI, Request, Response

from agent.agent import agent_info
from agent.heartbeat import HEARTBEAT_PATH, HeartbeatSender
from agent.settings import AgentSettings
from core.wire import AgentHeartbeat
from tests.agent.helpers import serving, wait_for


async def test_heartbeats_continue_after_a_failing_probe_and_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[tuple[str | None, dict]] = []
    answers = iter([401, 200, 200, 200, 200, 200, 200, 200, 200, 200])
    control_plane = FastAPI()

    @control_plane.post(HEARTBEAT_PATH)
    async def heartbeat(request: Request) -> Response:
        received.append((request.headers.get("authorization"), await request.json()))
        return Response(status_code=next(answers, 200))

    builds = {"count": 0}

    async def build() -> AgentHeartbeat:
        builds["count"] += 1
        if builds["count"] == 1:
            raise RuntimeError("NVML went away")
        return AgentHeartbeat(
            instance_id="i-1", agent_info=agent_info(), engine_state="running", engine_ready=True
        )

    caplog.set_level(logging.INFO, logger="agent.heartbeat")
    async with serving(control_plane) as url:
        settings = AgentSettings(
            control_plane_url=url, instance_id="i-1", token="tok-123", heartbeat_interval_s=0.05
        )
        sender = HeartbeatSender(settings, build)
        sender.start()
        try:
            await wait_for(_count(sender, 2), 10, "two accepted heartbeats")
        finally:
            await sender.stop()
    assert received[0][0] == "Bearer tok-123"
    assert received[0][1]["agent_info"]["checksum"] == agent_info().checksum
    assert "could not assemble a heartbeat" in caplog.text
    assert "heartbeat refused (401)" in caplog.text and "tok-123" not in caplog.text


def _count(sender: HeartbeatSender, wanted: int):  # type: ignore[no-untyped-def]
    async def probe() -> bool:
        await asyncio.sleep(0)
        return sender.sent >= wanted

    return probe
