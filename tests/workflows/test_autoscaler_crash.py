"""The autoscaler through worker crashes: the worker runs as its own process and is killed with
SIGKILL at random points while the autoscaler decides and scales up. No decision is taken twice
(no instance beyond what was decided) and none is lost (each scale-up has its outcome)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

from sqlmodel import select

from activities.providers.local.adapter import LocalCompute
from core.models import Deployment, Instance, InstanceState, ScalingAction, ScalingDecision
from core.settings import Settings
from tests.factories import seed
from tests.workflows.helpers import wait_state
from tests.workflows.test_crash_safety import start_worker, wait_polling
from workflows.autoscaler import autoscaler_workflow_id
from workflows.client import ensure_autoscaler, terminate_instance, wake_autoscaler

S = InstanceState
WANTED = 3
KILLS = 8


async def test_worker_killed_mid_decision_neither_double_scales_nor_loses_a_decision(
    settings: Settings, sessionmaker, temporal_client, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "15")))
    async with sessionmaker() as session:
        seeded = await seed(session, boot_timeout_s=600, engine_args={"model-load-delay-s": 0.3})
        deployment = seeded.deployment
        deployment.min_instances = deployment.max_instances = WANTED
        deployment.autoscaling_enabled = True
        session.add(deployment)
        await session.commit()
    dep_id = deployment.id
    await ensure_autoscaler(temporal_client, settings.task_queue, dep_id, interval_s=0.3)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        for kill in range(KILLS):
            await wait_polling(log, kill + 1)
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker = start_worker(settings, log)
        async with sessionmaker() as session:
            rows = (
                await session.exec(select(Instance).where(Instance.deployment_id == dep_id))
            ).all()
        for inst in rows:
            await wait_state(sessionmaker, inst.id, S.ready, timeout=120)
        async with sessionmaker() as session:
            rows = (
                await session.exec(select(Instance).where(Instance.deployment_id == dep_id))
            ).all()
            ups = (
                await session.exec(
                    select(ScalingDecision).where(
                        ScalingDecision.deployment_id == dep_id,
                        ScalingDecision.action == ScalingAction.scale_up,
                    )
                )
            ).all()
        assert len(rows) == WANTED, "a crash never creates an instance twice"
        assert sum(d.delta for d in ups) == WANTED, [(d.delta, d.reason) for d in ups]
        started = sorted(i for d in ups for i in (d.result or {}).get("started", []))
        assert started == sorted(str(i.id) for i in rows), "every scale-up has its outcome"
        assert len(await LocalCompute(settings).list_tagged()) == WANTED

        async with sessionmaker() as session:
            stored = await session.get(Deployment, dep_id)
            assert stored is not None
            stored.autoscaling_enabled = False
            session.add(stored)
            await session.commit()
        await wake_autoscaler(temporal_client, str(dep_id))
        handle = temporal_client.get_workflow_handle(autoscaler_workflow_id(str(dep_id)))
        assert await handle.result() == "autoscaling turned off"
        for inst in rows:
            await terminate_instance(temporal_client, inst.workflow_id)
        for inst in rows:
            await wait_state(sessionmaker, inst.id, S.terminated, timeout=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        LocalCompute(settings).power_off_all()
