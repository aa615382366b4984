"""The gateway's processes (`python -m gateway`): serve on Settings().host:Settings().gateway_port.

With INVENTIV_GATEWAY_WORKERS=N > 1, N processes each bind the port with SO_REUSEPORT (the
kernel spreads connections over them) and share Prometheus values through a folder; the parent
restarts one that dies, with backoff.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
import uvloop

from core.settings import MissingSettingError, Settings
from gateway.protocols.http_server import LeanServer
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("inventiv.gateway")

GRACEFUL_S = 30  # in-flight requests get this long to finish on SIGTERM
RESTART_MAX_DELAY_S = 30.0  # longest wait before a worker that keeps dying is started again
RESTART_RESET_S = 60.0  # a worker that lived this long starts again after 1 s
KEEP_ALIVE_S = 75  # idle client connections: longer than the usual 60 s of load balancers
# Net new container objects between young collections (CPython's default: 700). At 700, with
# request-log rows and token settlements waiting for their flush, a young collection came every
# few dozen requests and moved the requests then in flight into the older generations, until a
# full collection walked the whole heap: 15 of 13-55 ms in one benchmark run with 10,000 keys,
# a pause every request in flight shared (README, Gateway benchmark). What a request allocates
# is freed by reference counting (no cycles: tests/gateway/test_server.py), so collections are
# needed only as the heap grows.
GC_YOUNG_THRESHOLD = 50_000


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def serve() -> None:
    """Run one gateway process until SIGTERM/SIGINT (then drain and flush request logs)."""
    from gateway import metrics
    from gateway.app import create_app

    gc.set_threshold(GC_YOUNG_THRESHOLD)
    metrics.watch_gc_pauses()

    settings = Settings()
    gateway_settings = GatewaySettings()
    sock = _listen(settings.host, settings.gateway_port)
    app = create_app(settings, gateway_settings)
    if gateway_settings.server == "lean":
        uvloop.run(_serve_lean(app, sock))
        return
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting on the hot path
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_S,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    # uvicorn drains, runs the shutdown (request logs flushed), then re-raises the signal it
    # caught; a no-op handler makes that a clean exit with status 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvloop.run(server.serve(sockets=[sock]))


async def _serve_lean(app: Gateway, sock: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def startup() -> None:
        await app.startup()
        # What startup loaded lives as long as the process: out of the collector's sight, full
        # collections (a pause every request in flight shares) stop walking it.
        gc.collect()
        gc.freeze()

    server = LeanServer(
        app,
        startup,
        app.shutdown,
        keep_alive_s=KEEP_ALIVE_S,
        limits=app.config.server_limits(),
    )
    await server.serve(sock, stop, GRACEFUL_S)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings()
    try:
        settings.require_all("database_url", "redis_url", "secret_key")
    except MissingSettingError as exc:
        sys.exit(f"the gateway cannot start: {exc}")
    workers = GatewaySettings().workers
    if workers == 1:
        serve()
        return
    # Shared Prometheus values must be set up before any worker imports prometheus_client.
    own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inventiv-gateway-")
    context = multiprocessing.get_context("spawn")
    supervisor = _Supervisor(lambda: context.Process(target=serve, daemon=False), workers)
    log.info(
        "gateway on http://%s:%d with %d workers", settings.host, settings.gateway_port, workers
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    exitcode = supervisor.run()
    if own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    sys.exit(exitcode)


class _Supervisor:
    """Keeps `count` worker processes up: one that dies (crash, OOM kill) while the gateway is not
    stopping is started again, after a delay that doubles while it keeps dying young (up to
    RESTART_MAX_DELAY_S) and resets once one has lived RESTART_RESET_S. A stop signal is
    forwarded to every worker, which then drain."""

    def __init__(self, spawn: Callable[[], BaseProcess], count: int) -> None:
        self.spawn = spawn
        self.processes = [spawn() for _ in range(count)]
        now = time.monotonic()
        self.started = [now] * count
        self.delay = [0.0] * count
        self.restart_at: list[float | None] = [None] * count
        self.stopping = False

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def run(self) -> int:
        for process in self.processes:
            process.start()
        while not self.stopping:
            multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=0.5)
            if not self.stopping:
                self._restart_dead(time.monotonic())
        for process in self.processes:
            process.join()
        return max((p.exitcode or 0) for p in self.processes)

    def _restart_dead(self, now: float) -> None:
        for i, process in enumerate(self.processes):
            if process.is_alive():
                continue
            restart_at = self.restart_at[i]
            if restart_at is None:
                lived = now - self.started[i]
                young = lived < RESTART_RESET_S
                self.delay[i] = (
                    min(max(self.delay[i] * 2, 1.0), RESTART_MAX_DELAY_S) if young else 1.0
                )
                self.restart_at[i] = now + self.delay[i]
                log.error(
                    "gateway worker %d (pid %s) exited with %s after %.0fs: restarting in %.0fs",
                    i,
                    process.pid,
                    process.exitcode,
                    lived,
                    self.delay[i],
                )
            elif now >= restart_at:
                self.processes[i] = self.spawn()
                self.processes[i].start()
                self.started[i], self.restart_at[i] = now, None
                log.warning("gateway worker %d restarted (pid %s)", i, self.processes[i].pid)
