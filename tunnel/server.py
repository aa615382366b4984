"""`inventiv tunnel`: the endpoint machines dial (WebSocket, TLS when a certificate is set) and
the private relay, two uvicorn servers in one event loop around one `TunnelHub`."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.providers.tunnel.settings import TunnelSettings
from core.db import make_engine, make_sessionmaker
from core.models import utcnow
from core.settings import Settings
from tunnel.hub import Clock, Drain, TunnelHub


class TunnelServer:
    def __init__(
        self,
        settings: Settings,
        tunnel: TunnelSettings,
        *,
        drain: Drain | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._engine: AsyncEngine = make_engine(settings.require("database_url"), pool_size=4)
        self.hub = TunnelHub(
            settings, tunnel, make_sessionmaker(self._engine), drain=drain, clock=clock
        )
        tls = (
            {"ssl_certfile": str(tunnel.tls_cert), "ssl_keyfile": str(tunnel.tls_key)}
            if tunnel.tls_cert and tunnel.tls_key
            else {}
        )
        common = {
            "log_level": "warning",
            "lifespan": "off",
            "access_log": False,
            "interface": "asgi3",
        }
        self.endpoint = uvicorn.Server(
            uvicorn.Config(
                self.hub.endpoint, host=tunnel.host, port=tunnel.port, ws_ping_interval=10,
                ws_ping_timeout=10, **common, **tls,  # type: ignore[arg-type]
            )
        )  # fmt: skip
        self.relay = uvicorn.Server(
            uvicorn.Config(
                self.hub.relay, host=tunnel.relay_host, port=tunnel.relay_port,
                timeout_keep_alive=30, **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for server in (self.endpoint, self.relay):
            task = asyncio.create_task(server.serve())
            self._tasks.append(task)
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        self._tasks.append(asyncio.create_task(self.hub.sync_forever()))

    async def stop(self) -> None:
        """Connections close (machines reconnect to another replica, or to this one restarted).
        A second call does nothing."""
        if not self._tasks:
            return
        await self.hub.close()
        for server in (self.endpoint, self.relay):
            server.should_exit = True
        sync = self._tasks.pop()
        sync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sync
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._engine.dispose()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()
