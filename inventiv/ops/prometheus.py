"""A real Prometheus (Debian's `prometheus` package) for `inventiv dev` and the tests.

The configuration is generated, with the same jobs and the same rules as
deploy/prometheus/prometheus.yml (the Compose one): the API (fleet gauges), each gateway
replica, the worker (Temporal SDK metrics), and every live instance's agent and engine, found
through the API's HTTP service discovery. Prometheus reads YAML, of which JSON is a subset.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.embedded import stop_process

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"


def ensure_metrics_token(path: Path) -> str:
    """The scrape token of a dev stack: generated once into the data folder (0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def scrape_config(
    *,
    api: str,
    gateways: list[str],
    worker: str | None,
    token_file: Path,
    scrape_interval: str = "15s",
) -> dict[str, Any]:
    """The Prometheus configuration for a stack at these host:port addresses."""
    bearer = {"type": "Bearer", "credentials_file": str(token_file)}
    sd_url = f"http://{api}/api/v1/prometheus/targets"
    jobs: list[dict[str, Any]] = [
        {"job_name": "api", "authorization": bearer, "static_configs": [{"targets": [api]}]},
        # The gateway's /metrics names every project's models: the same scrape token.
        {"job_name": "gateway", "authorization": bearer, "static_configs": [{"targets": gateways}]},
    ]
    if worker:
        jobs.append({"job_name": "worker", "static_configs": [{"targets": [worker]}]})
    for role, job in (("agent", "agents"), ("engine", "engines")):
        jobs.append(
            {
                "job_name": job,
                "http_sd_configs": [
                    {
                        "url": f"{sd_url}?role={role}",
                        "authorization": bearer,
                        "refresh_interval": scrape_interval,
                    }
                ],
            }
        )
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in sorted(RULES.glob("*.yml"))],
        "scrape_configs": jobs,
    }


def installed() -> bool:
    return shutil.which("prometheus") is not None


class LocalPrometheus:
    """`prometheus` as a child process, its data and configuration in one folder."""

    def __init__(self, folder: Path, host: str, port: int) -> None:
        self.folder = folder
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, config: dict[str, Any], timeout_s: float = 30) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2))
        log = open(self.folder / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=7d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited; see {self.folder / 'prometheus.log'}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready at {self.url} after {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def start_dev_prometheus(
    data_dir: Path, host: str, api_port: int, gateway_port: int
) -> LocalPrometheus | None:
    """Prometheus over the dev stack, when installed (None otherwise)."""
    from core.observability import ObservabilitySettings

    if not installed():
        return None
    ops = ObservabilitySettings()
    worker = f"{host}:{ops.worker_metrics_port}" if ops.worker_metrics_port else None
    prometheus = LocalPrometheus(data_dir / "prometheus", host, ops.prometheus_port)
    token_file = data_dir / "metrics_token"
    ensure_metrics_token(token_file)
    config = scrape_config(
        api=f"{host}:{api_port}",
        gateways=[f"{host}:{gateway_port}"],
        worker=worker,
        token_file=token_file,
    )
    try:
        prometheus.start(config)
    except (RuntimeError, TimeoutError) as exc:
        # The platform runs without it (a port taken by a system Prometheus, say).
        print(f"warning: Prometheus did not start ({exc})", file=sys.stderr)
        prometheus.stop()
        return None
    return prometheus
