"""The `inventiv` command line: dev stack, migrations, each service on its own, and the
operator commands over the REST API (login, deployments, instances, keys, usage, costs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import runpy
import signal
import sys
import warnings

from core.settings import MissingSettingError, RequiredSetting, Settings
from inventiv.ops import cli as operator_cli


def _need(settings: Settings, *names: RequiredSetting) -> None:
    try:
        settings.require_all(*names)
    except MissingSettingError as exc:
        raise SystemExit(
            f"error: {exc} (or run `inventiv dev`, which starts embedded servers)"
        ) from None


def cmd_migrate(settings: Settings) -> int:
    from core.migrate import upgrade

    _need(settings, "database_url")
    upgrade(settings.require("database_url"))
    print("database is at the latest migration")
    return 0


def cmd_api(settings: Settings) -> int:
    import uvicorn

    from api.app import create_app
    from api.http_edge import server_config

    _need(settings, "database_url", "redis_url", "temporal_address", "secret_key")
    uvicorn.Server(server_config(create_app(settings), settings)).run()
    return 0


def serve_worker_metrics(host: str) -> None:
    """The Temporal SDK's metrics (task latencies, slots, failures) for Prometheus, when on."""
    from temporalio.runtime import Runtime

    from core.observability import ObservabilitySettings, worker_metrics_runtime

    port = ObservabilitySettings().worker_metrics_port
    if port:
        try:
            Runtime.set_default(worker_metrics_runtime(f"{host}:{port}"))
        except ValueError as exc:  # the SDK: "Failed starting Prometheus exporter: Address in use"
            # Orchestration matters more than its metrics: run without them, say why.
            logging.getLogger(__name__).warning("worker metrics off on %s:%s: %s", host, port, exc)


def cmd_worker(settings: Settings) -> int:
    from workers.worker import run_worker

    _need(settings, "database_url", "redis_url", "temporal_address", "secret_key")
    serve_worker_metrics(settings.host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(main())
    return 0


def cmd_tunnel(settings: Settings) -> int:
    """The tunnel endpoint machines dial, with its relay; drains through the orchestrator."""
    from temporalio.client import Client

    from activities.providers.tunnel.settings import TunnelSettings
    from core.models import TerminationReason
    from tunnel.server import TunnelServer
    from workflows.client import drain_if_accepted

    _need(settings, "database_url", "temporal_address", "secret_key")

    async def main() -> None:
        temporal = await Client.connect(
            settings.require("temporal_address"), namespace=settings.temporal_namespace
        )

        async def drain(workflow_id: str) -> bool:  # the owner's slot or quota is ending
            return await drain_if_accepted(temporal, workflow_id, TerminationReason.scale_down)

        await TunnelServer(settings, TunnelSettings(), drain=drain).serve_forever()

    asyncio.run(main())
    return 0


def cmd_dev(settings: Settings) -> int:
    from inventiv.dev import run_dev

    return run_dev(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inventiv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run the whole platform with embedded servers (foreground)")
    sub.add_parser("migrate", help="apply database migrations (DATABASE_URL)")
    sub.add_parser("api", help="run the API service")
    sub.add_parser("worker", help="run the orchestrator worker")
    sub.add_parser("gateway", help="run the gateway")
    sub.add_parser("tunnel", help="run the endpoint tunnelled machines dial, and its relay")
    operator_cli.add_commands(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):  # an operator command, over the REST API
        return operator_cli.run(args)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # The dev supervisor prints its own summary; services log INFO to their log files.
    level = logging.WARNING if args.command == "dev" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "gateway":
        sys.argv = ["gateway"]
        runpy.run_module("gateway", run_name="__main__")
        return 0
    settings = Settings()
    commands = {
        "dev": cmd_dev,
        "migrate": cmd_migrate,
        "api": cmd_api,
        "worker": cmd_worker,
        "tunnel": cmd_tunnel,
    }
    return commands[args.command](settings)
