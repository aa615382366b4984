"""`inventiv dev`: the whole platform on one machine, in the foreground.

Starts the embedded PostgreSQL, Redis and Temporal (unless their URLs are set), migrates, seeds,
then runs the API, the gateway and the orchestrator worker as child processes, as production
would. Ctrl-C (SIGINT) or SIGTERM stops every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time

import asyncpg
from sqlmodel import col, select

from activities.providers.local.adapter import LocalCompute
from core.db import make_engine, make_sessionmaker
from core.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedTemporal,
    PortInUseError,
    require_free_port,
    stop_process,
    wait_for_port,
)
from core.migrate import upgrade
from core.models import Deployment
from core.settings import Settings
from inventiv.ops.prometheus import LocalPrometheus, ensure_metrics_token, start_dev_prometheus
from inventiv.seed import DevCredentials, seed_dev
from workflows.client import ensure_autoscaler

DEV_DATABASE = "inventiv"


def ensure_secret_key(settings: Settings) -> str:
    """The session-signing key: from settings, else generated once into the data folder (0600)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_path("secret_key")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


async def ensure_database(admin_url: str, name: str) -> str:
    """Create the application database next to pgserver's default one; return its URL."""
    from urllib.parse import urlsplit, urlunsplit

    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _seed_and_scale(settings: Settings) -> DevCredentials:
    """Seed on first start; start the autoscalers (the demo's keeps one instance up)."""
    from temporalio.client import Client

    engine = make_engine(settings.require("database_url"), pool_size=2)
    try:
        async with make_sessionmaker(engine)() as session:
            creds = await seed_dev(session, settings, settings.data_path("dev-credentials.json"))
            autoscaled = (
                await session.exec(
                    select(col(Deployment.id)).where(
                        col(Deployment.autoscaling_enabled), col(Deployment.deleted_at).is_(None)
                    )
                )
            ).all()
        client = await Client.connect(settings.require("temporal_address"))
        for deployment_id in autoscaled:
            await ensure_autoscaler(
                client, settings.task_queue, deployment_id, settings.autoscale_interval_s
            )
    finally:
        await engine.dispose()
    return creds


class DevStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedTemporal] = []
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.local = LocalCompute(settings)
        self.prometheus: LocalPrometheus | None = None

    def check_ports(self) -> None:
        s = self.settings
        require_free_port(s.host, s.api_port, "INVENTIV_API_PORT")
        require_free_port(s.host, s.gateway_port, "INVENTIV_GATEWAY_PORT")

    def start_servers(self) -> Settings:
        s = self.settings
        data = s.data_dir.resolve()
        updates: dict[str, object] = {"data_dir": data, "secret_key": ensure_secret_key(s)}
        if not s.database_url:
            pg = EmbeddedPostgres(data / "postgres")
            admin_url = pg.start()
            self.embedded.append(pg)
            updates["database_url"] = asyncio.run(ensure_database(admin_url, DEV_DATABASE))
        if not s.redis_url:
            rd = EmbeddedRedis(data / "redis")
            updates["redis_url"] = rd.start()
            self.embedded.append(rd)
        if not s.temporal_address:
            tp = EmbeddedTemporal(
                db_file=data / "temporal.db",
                host=s.host,
                port=s.temporal_port,
                ui_port=s.temporal_ui_port,
                log_file=data / "temporal.log",
            )
            updates["temporal_address"] = tp.start()
            self.embedded.append(tp)
        self.settings = s.model_copy(update=updates)
        self.local = LocalCompute(self.settings)
        return self.settings

    def child_env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "INVENTIV_DATA_DIR": str(s.data_dir),
                "INVENTIV_DATABASE_URL": s.require("database_url"),
                "INVENTIV_REDIS_URL": s.require("redis_url"),
                "INVENTIV_TEMPORAL_ADDRESS": s.require("temporal_address"),
                "INVENTIV_SECRET_KEY": s.require("secret_key"),
                "INVENTIV_METRICS_TOKEN": ensure_metrics_token(s.data_path("metrics_token")),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(self.settings.data_path("logs", f"{name}.log"), "ab")
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append((name, proc))

    def start_services(self) -> None:
        s = self.settings
        self.spawn("worker", ["-m", "inventiv", "worker"])
        self.spawn("api", ["-m", "inventiv", "api"])
        self.spawn("gateway", ["-m", "gateway"])
        for name, port in (("api", s.api_port), ("gateway", s.gateway_port)):
            proc = dict(self.children)[name]
            try:
                wait_for_port(s.host, port, 60, proc)
            except (RuntimeError, TimeoutError) as exc:
                log_path = s.data_path("logs", f"{name}.log")
                raise SystemExit(f"{name} did not start ({exc}); see {log_path}") from exc
        self.prometheus = start_dev_prometheus(s.data_dir, s.host, s.api_port, s.gateway_port)

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for _name, proc in reversed(self.children):
            stop_process(proc)
        self.children.clear()
        powered_off = self.local.power_off_all()
        if powered_off:
            print(f"stopped {powered_off} local machine(s); they resume on the next `make dev`")
        for part in reversed(self.embedded):
            part.stop()
        self.embedded.clear()

    def banner(self, creds: DevCredentials) -> str:
        s = self.settings
        host = "localhost" if s.host in ("127.0.0.1", "0.0.0.0") else s.host
        return f"""
  Inventiv is running (Ctrl-C stops everything).

  API          http://{host}:{s.api_port}/api/v1   docs: http://{host}:{s.api_port}/docs
  Gateway      http://{host}:{s.gateway_port}/v1   (OpenAI-compatible)
  Temporal UI  {s.temporal_ui}      Temporal: {s.temporal_address}
  Prometheus   {self.prometheus.url if self.prometheus else "not installed (apt-get install prometheus)"}
  Admin        {creds.admin_email} / {creds.admin_password}
  API key      {creds.api_key}
  Credentials  {s.data_path("dev-credentials.json")}
  Logs         {s.data_path("logs")}

  The demo instance boots in a few seconds (dashboard: http://{host}:{s.api_port}/); then:
  curl http://{host}:{s.gateway_port}/v1/chat/completions \\
    -H "Authorization: Bearer {creds.api_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{s.demo_model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
"""


def run_dev(settings: Settings) -> int:
    stack = DevStack(settings)
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.check_ports()
        started = time.monotonic()
        settings = stack.start_servers()
        upgrade(settings.require("database_url"))
        resumed = stack.local.power_on_all()
        stack.start_services()
        creds = asyncio.run(_seed_and_scale(settings))
        print(stack.banner(creds), flush=True)
        if resumed:
            print(f"  resumed {resumed} local machine(s) from the previous run", flush=True)
        print(f"  ready in {time.monotonic() - started:.1f}s", flush=True)
        while not stop_requested:
            for name, proc in stack.children:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        print("\nstopping…", flush=True)
        return 0
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
