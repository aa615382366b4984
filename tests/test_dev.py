"""`inventiv dev` as a newcomer runs it: starts everything, answers a chat completion with the
printed key, stops every process on SIGINT, and keeps its data for the next start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from activities.providers.local.adapter import machine_pids
from core.embedded import free_port

REPO = Path(__file__).resolve().parents[1]


def start_dev(data: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS")
    }
    env.update({f"INVENTIV_{k}": str(v) for k, v in ports.items()})
    env["INVENTIV_DATA_DIR"] = str(data)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "inventiv", "dev"], env=env, cwd=REPO, stdout=out, stderr=out
        )


def processes_under(data: Path) -> list[psutil.Process]:
    """Servers started for this data folder (their command lines name it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(data) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def chat_until_answered(port: int, key: str, timeout: float = 60) -> dict:
    body = {"model": "demo-llm", "messages": [{"role": "user", "content": "Hello"}]}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                r = await client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                if r.status_code == 200:
                    return r.json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError(f"no completion within {timeout}s")


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return await asyncio.to_thread(proc.wait, 60)


async def test_dev_serves_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "dev.log"
    ports = {
        "API_PORT": free_port(),
        "GATEWAY_PORT": free_port(),
        "TEMPORAL_PORT": free_port(),
        "TEMPORAL_UI_PORT": free_port(),
        "WORKER_METRICS_PORT": free_port(),
        "PROMETHEUS_PORT": free_port(),
    }
    dev = start_dev(data, ports, log)
    try:
        creds_file = data / "dev-credentials.json"
        for _ in range(240):
            if creds_file.exists() and "ready in" in log.read_text():
                break
            assert dev.poll() is None, log.read_text()
            await asyncio.sleep(0.25)
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        creds = json.loads(creds_file.read_text())
        assert set(creds) == {"api_key", "admin_email", "admin_password"}
        assert creds["api_key"] in log.read_text(), "the key is printed"
        reply = await chat_until_answered(ports["GATEWAY_PORT"], creds["api_key"])
        assert reply["choices"][0]["message"]["content"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['API_PORT']}") as api:
            login = await api.post(
                "/api/v1/auth/login",
                json={"email": creds["admin_email"], "password": creds["admin_password"]},
            )
            token = login.json()["access_token"]
            first = await api.get("/api/v1/instances", headers={"Authorization": f"Bearer {token}"})
        instance_ids = {i["id"] for i in first.json()["items"]}
        assert instance_ids
    finally:
        assert await stop(dev) == 0, log.read_text()
    assert processes_under(data) == []
    assert all(machine_pids(i) == [] for i in instance_ids), "local machines stopped"

    # A second start keeps users, keys and instances: the same key answers again.
    dev = start_dev(data, ports, log)
    try:
        reply = await chat_until_answered(ports["GATEWAY_PORT"], creds["api_key"])
        assert reply["choices"]
        assert json.loads(creds_file.read_text()) == creds
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['API_PORT']}") as api:
            login = await api.post(
                "/api/v1/auth/login",
                json={"email": creds["admin_email"], "password": creds["admin_password"]},
            )
            again = await api.get(
                "/api/v1/instances",
                headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            )
        assert instance_ids <= {i["id"] for i in again.json()["items"]}
    finally:
        assert await stop(dev) == 0, log.read_text()
    assert processes_under(data) == []
