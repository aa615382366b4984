"""`python -m gateway`: serve the gateway on Settings().host:Settings().gateway_port.

With INVENTIV_GATEWAY_WORKERS=N > 1, N processes each bind the port with SO_REUSEPORT (the
kernel spreads connections over them) and share Prometheus values through a folder.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from types import FrameType

import uvicorn
import uvloop

from core.settings import Settings
from gateway.settings import GatewaySettings

log = logging.getLogger("inventiv.gateway")


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
    from gateway.app import create_app

    settings = Settings()
    gateway_settings = GatewaySettings()
    sock = _listen(settings.host, settings.gateway_port)
    config = uvicorn.Config(
        create_app(settings, gateway_settings),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting on the hot path
        log_level="warning",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=75,  # longer than the usual 60 s of load balancers in front
    )
    server = uvicorn.Server(config)
    # uvicorn drains, runs the shutdown (request logs flushed), then re-raises the signal it
    # caught; a no-op handler makes that a clean exit with status 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvloop.run(server.serve(sockets=[sock]))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings()
    workers = GatewaySettings().workers
    if workers == 1:
        serve()
        return
    # Shared Prometheus values must be set up before any worker imports prometheus_client.
    metrics_dir = tempfile.mkdtemp(prefix="inventiv-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=serve, daemon=False) for _ in range(workers)]
    for process in processes:
        process.start()
    log.info(
        "gateway on http://%s:%d with %d workers", settings.host, settings.gateway_port, workers
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    sys.exit(max((p.exitcode or 0) for p in processes))


if __name__ == "__main__":
    main()
