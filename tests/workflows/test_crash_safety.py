"""Crash safety: the orchestrator worker runs as its own process and is killed with SIGKILL at
random points while many instances are provisioned and terminated. Afterwards every instance is
ready or terminated, the provider holds nothing the database does not know as live, every
history is a legal path, and some kills landed inside an activity (the action log shows the
attempt the crash cut short).

The seed comes from INVENTIV_CRASH_SEED (a fresh one otherwise) and is printed, so a failure can
be replayed: INVENTIV_CRASH_SEED=<seed> pytest tests/workflows/test_crash_safety.py."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from sqlmodel import select
from temporalio.client import Client

from activities.providers.local.adapter import LocalCompute
from core.models import Instance, InstanceAction, InstanceState, InstanceVolume
from core.settings import Settings
from core.states import is_legal_path
from tests.factories import seed
from tests.workflows.helpers import history, wait_state
from workflows.client import (
    CommandRefusedError,
    OrchestratorUnavailableError,
    create_instance,
    terminate_instance,
)

S = InstanceState
INSTANCES = 6
ROUNDS = 22
REPO = Path(__file__).resolve().parents[2]


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "INVENTIV_DATA_DIR": str(settings.data_dir),
        "INVENTIV_DATABASE_URL": settings.require("database_url"),
        "INVENTIV_REDIS_URL": settings.require("redis_url"),
        "INVENTIV_TEMPORAL_ADDRESS": settings.require("temporal_address"),
        "INVENTIV_TASK_QUEUE": settings.task_queue,
        "INVENTIV_SECRET_KEY": settings.require("secret_key"),
        "INVENTIV_BOOT_POLL_INTERVAL_S": "0.2",
        "INVENTIV_HEALTH_INTERVAL_S": "1",
        "INVENTIV_DRAIN_TIMEOUT_S": "5",
        "INVENTIV_RECONCILE_INTERVAL_S": "2",
        "INVENTIV_ORPHAN_GRACE_S": "5",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "inventiv", "worker"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def terminate_through_crashes(client: Client, workflow_id: str) -> None:
    """Terminate as a client would while workers come and go: the workflow's validator needs a
    worker, so a command that found none is sent again; one whose answer a crash lost is refused
    as already terminating on the next try, which means it was taken."""
    while True:
        try:
            await terminate_instance(client, workflow_id)
            return
        except OrchestratorUnavailableError:
            continue
        except CommandRefusedError as refused:
            assert "already terminating" in str(refused), refused
            return


async def wait_polling(log: Path, starts: int, timeout: float = 60) -> None:
    """Until the worker log says it is polling for the `starts`-th time."""
    for _ in range(int(timeout / 0.05)):
        if log.exists() and log.read_text().count("orchestrator worker polling") >= starts:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker did not start polling within {timeout}s: see {log}")


async def test_worker_killed_at_random_points(
    settings: Settings, sessionmaker, temporal_client, tmp_path: Path
) -> None:
    crash_seed = int(os.environ.get("INVENTIV_CRASH_SEED") or random.randrange(1_000_000))
    print(f"INVENTIV_CRASH_SEED={crash_seed}")  # pytest shows it when the test fails
    rng = random.Random(crash_seed)
    async with sessionmaker() as session:
        seeded = await seed(
            session,
            boot_timeout_s=600,  # the crashes, not the deadline, are under test here
            engine_args={
                "model-load-delay-s": 0.3,
                "volumes": [{"size_gb": 5, "delete_on_terminate": True}],
            },
        )
        seeded.deployment.max_instances = INSTANCES  # the quota check allows them all
        session.add(seeded.deployment)
        await session.commit()
        instances = [
            await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
            for _ in range(INSTANCES)
        ]
    to_terminate = instances[: INSTANCES // 2]
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    terminations: list[asyncio.Task[None]] = []
    try:
        for round_no in range(ROUNDS):
            # Kill it once it polls (not while Python is still importing), at a random point.
            await wait_polling(log, round_no + 1)
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            if round_no == ROUNDS // 3:
                # Termination, too, runs through the crashes: asked while no worker runs.
                terminations = [
                    asyncio.create_task(terminate_through_crashes(temporal_client, i.workflow_id))
                    for i in to_terminate
                ]
            worker = start_worker(settings, log)
        await asyncio.gather(*terminations)
        for inst in instances:
            wanted = S.terminated if inst in to_terminate else S.ready
            await wait_state(sessionmaker, inst.id, wanted, timeout=120)

        # The provider holds exactly the live instances' machines and volumes.
        local = LocalCompute(settings)
        machines = await local.list_tagged()
        live_ids = {str(i.id) for i in instances[INSTANCES // 2 :]}
        assert sorted(m.instance_id for m in machines) == sorted(live_ids), "one machine each"
        async with sessionmaker() as session:
            known = {
                v.provider_volume_id
                for v in (await session.exec(select(InstanceVolume))).all()
                if v.state == "attached"
            }
        volumes = await local.list_tagged_volumes()
        assert {v.instance_id for v in volumes} <= live_ids
        assert {v.volume_id for v in volumes} == known

        # Then the rest terminate cleanly too.
        for inst in instances[INSTANCES // 2 :]:
            await terminate_instance(temporal_client, inst.workflow_id)
        for inst in instances:
            await wait_state(sessionmaker, inst.id, S.terminated, timeout=120)
        assert await local.list_tagged() == []
        assert await local.list_tagged_volumes() == []
        async with sessionmaker() as session:
            rows = (await session.exec(select(Instance))).all()
        assert len(rows) == INSTANCES, "a crash never duplicates an instance"
        async with sessionmaker() as session:
            cut_short = [
                a.step
                for a in (await session.exec(select(InstanceAction))).all()
                if a.error == "attempt lost (worker stopped); retried"
            ]
        assert cut_short, f"no kill landed inside an activity (seed {crash_seed})"
        print(f"kills inside activities: {len(cut_short)} ({sorted(set(cut_short))})")
        for inst in instances:
            path = await history(sessionmaker, inst.id)
            assert is_legal_path(path), path
            assert path[-1] == S.terminated
    finally:
        for pending in terminations:
            pending.cancel()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        LocalCompute(settings).power_off_all()
