"""The local provider runs inside the worker's event loop: stopping a machine whose processes
ignore SIGTERM (up to 10 s of waiting) must not stall the other work of that loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from activities.providers.base import CreateRequest
from activities.providers.local.adapter import LocalCompute, machine_pids
from activities.providers.local.catalogue import LOCAL_INSTANCE_TYPE
from activities.providers.local.settings import LocalFaults
from core.settings import Settings

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


async def longest_stall(work: Awaitable[Any]) -> tuple[float, Any]:
    """Run `work` while a ticker measures the longest gap between its 20 ms ticks."""
    stall = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal stall
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            stall = max(stall, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        done.set()
        await tick
    return stall, result


def stubborn_machine(instance_id: str) -> subprocess.Popen[bytes]:
    """A machine process (it carries the instance id, as the agent does) that ignores SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        env={**os.environ, "INVENTIV_AGENT_INSTANCE_ID": instance_id},
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # SIGTERM ignored
    return proc


async def _created(compute: LocalCompute) -> tuple[str, str]:
    request = CreateRequest(
        instance_id=str(uuid.uuid4()),
        instance_type=LOCAL_INSTANCE_TYPE,
        model="demo",
        served_name="demo",
    )
    created = await compute.create(request)
    return request.instance_id, created.resource_id


async def test_deleting_a_stubborn_machine_leaves_the_loop_free(tmp_path: Path) -> None:
    compute = LocalCompute(Settings(data_dir=tmp_path))
    instance_id, resource_id = await _created(compute)
    proc = stubborn_machine(instance_id)
    started = time.monotonic()
    stall, _ = await longest_stall(compute.delete(resource_id))
    assert time.monotonic() - started > 4, "SIGTERM was ignored: the kill waited for SIGKILL"
    assert proc.wait(timeout=5) == -9 and machine_pids(instance_id) == []
    assert stall < 0.5, f"the event loop stalled for {stall:.2f}s"


async def test_a_vanishing_machine_is_stopped_without_stalling_the_loop(tmp_path: Path) -> None:
    compute = LocalCompute(Settings(data_dir=tmp_path), LocalFaults(vanish_after_s=0))
    instance_id, resource_id = await _created(compute)
    proc = stubborn_machine(instance_id)
    stall, machine = await longest_stall(compute.get(resource_id))
    assert machine is None and proc.wait(timeout=5) == -9
    assert stall < 0.5, f"the event loop stalled for {stall:.2f}s"


async def test_a_local_machine_gets_none_of_the_workers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "INVENTIV_SECRET_KEY": "worker-secret-key",
        "INVENTIV_DATABASE_URL": "postgresql://inventiv:pw@db/inventiv",
        "DATABASE_URL": "postgresql://inventiv:pw@db/inventiv",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "INVENTIV_SCALEWAY_SECRET_KEY": "scw-secret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the engines' own variables do pass
    compute = LocalCompute(Settings(data_dir=tmp_path))
    instance_id, resource_id = await _created(compute)
    try:
        await compute.start(resource_id)
        machine = await compute.get(resource_id)
        assert machine is not None and machine.agent_url
        async with httpx.AsyncClient(timeout=2) as http:  # and the agent runs on that much
            for _ in range(100):
                try:
                    if (await http.get(f"{machine.agent_url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the local machine's agent never answered")
        for _ in range(50):
            pids = machine_pids(instance_id)
            if len(pids) == 2:  # the agent and its engine
                break
            await asyncio.sleep(0.1)
        assert len(pids) == 2, pids
        for pid in pids:
            env = psutil.Process(pid).environ()
            assert not set(secrets) & set(env), sorted(set(secrets) & set(env))
            assert not [value for value in env.values() if value in secrets.values()]
            assert env["HF_HUB_OFFLINE"] == "1"
    finally:
        await compute.delete(resource_id)
    assert machine_pids(instance_id) == []
