"""Sends heartbeats to the control plane: agent identity, engine state, load, GPU and host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from agent.settings import AgentSettings
from core.wire import AgentHeartbeat

log = logging.getLogger("agent.heartbeat")

HEARTBEAT_PATH = "/api/v1/agents/heartbeat"


class HeartbeatSender:
    def __init__(
        self, settings: AgentSettings, build: Callable[[], Awaitable[AgentHeartbeat]]
    ) -> None:
        self.settings = settings
        self._build = build
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.last_status: int | None = None
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.control_plane_url and self.settings.instance_id)

    def start(self) -> None:
        if not self.enabled:
            log.info("heartbeats off: no control plane URL or instance id")
            return
        self._task = asyncio.create_task(self._run(), name="heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        url = self.settings.control_plane_url.rstrip("/") + HEARTBEAT_PATH
        headers = {"Authorization": f"Bearer {self.settings.token.get_secret_value()}"}
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            while True:
                await self.send_once(client, url)
                await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def send_once(self, client: httpx.AsyncClient, url: str) -> None:
        try:
            payload = await self._build()
        except Exception:
            # a failing probe must not end the heartbeats: the next one may succeed
            log.exception("could not assemble a heartbeat")
            return
        try:
            response = await client.post(
                url, content=payload.model_dump_json(), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            self.last_error = f"heartbeat to {url} failed: {exc!r}"
            log.warning("%s", self.last_error)
            return
        self.last_status = response.status_code
        if response.status_code == 401:
            self.last_error = "heartbeat refused (401): check INVENTIV_AGENT_TOKEN"
            log.error("%s", self.last_error)
        elif response.status_code >= 300:
            self.last_error = (
                f"heartbeat answered HTTP {response.status_code}: {response.text[:200]}"
            )
            log.warning("%s", self.last_error)
        else:
            self.sent += 1
            self.last_error = None
