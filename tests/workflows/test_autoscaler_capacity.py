"""The autoscaler counts only machines available now (real PostgreSQL and Redis, the real tunnel
and SSH adapters over their tables): a deployment on tunnelled machines that wants three
instances orders as many as there are connected machines inside their owner's slots, and says
so, instead of ordering three and watching two creates fail."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from temporalio.testing import ActivityEnvironment

from activities.autoscale import AutoscaleActivities
from activities.contracts import AssessInput
from activities.providers.local.adapter import LocalCompute
from activities.providers.ssh.adapter import SSHCompute
from activities.providers.ssh.settings import SSHSettings
from activities.providers.tunnel.adapter import TunnelCompute
from activities.providers.tunnel.settings import TunnelSettings
from core.autoscaling import PolicyState
from core.models import BareMetalHost, Deployment, Machine, Project
from core.settings import Settings
from tests.factories import make_user, seed

MONDAY_NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EVENINGS = [{"days": list(range(7)), "start": "20:00", "end": "08:00"}]


async def _unused(*_: Any) -> Any:
    raise AssertionError("not called")


async def _assess(activities: AutoscaleActivities, deployment: Deployment) -> Any:
    return await ActivityEnvironment().run(
        activities.assess,
        AssessInput(
            deployment_id=str(deployment.id),
            decision_id=str(uuid.uuid4()),
            now=MONDAY_NOON.timestamp(),
            state=PolicyState(),
        ),
    )


async def _wants_three(session: Any, deployment: Deployment) -> Deployment:
    deployment.min_instances = 3
    deployment.max_instances = 5
    deployment.autoscaling_enabled = True
    session.add(deployment)
    await session.commit()
    return deployment


async def test_tunnelled_machines_cap_the_scale_up_at_those_available_now(
    settings: Settings, sessionmaker: Any, redis_client: aioredis.Redis
) -> None:
    clock = {"now": MONDAY_NOON}
    assert settings.database_url
    tunnel = TunnelCompute(TunnelSettings(), settings.database_url, clock=lambda: clock["now"])
    activities = AutoscaleActivities(
        sessionmaker, redis_client, _unused, _unused, providers={"tunnel": tunnel}
    )
    async with sessionmaker() as session:
        seeded = await seed(session, provider_kind="tunnel", instance_type="tunnel")
        deployment = await _wants_three(session, seeded.deployment)
        owner = await make_user(session)
        stranger_project = Project(name=f"other-{uuid.uuid4().hex[:6]}")
        session.add(stranger_project)
        await session.flush()
        connected = MONDAY_NOON - timedelta(minutes=5)

        def machine(name: str, **fields: Any) -> Machine:
            return Machine(
                name=name,
                owner_id=owner.id,
                public_key=secrets.token_hex(32),
                credential_hash=secrets.token_hex(32),
                credential_expires_at=MONDAY_NOON + timedelta(days=1),
                instance_type="tunnel",
                **fields,
            )

        free = machine("free", connected_at=connected)
        evenings = machine("evenings-only", connected_at=connected, slots=EVENINGS)
        offline = machine("offline")
        private = machine("someone-elses", connected_at=connected, project_id=stranger_project.id)
        session.add_all([free, evenings, offline, private])
        await session.commit()

    try:
        plan = await _assess(activities, deployment)
        assert plan.delta == 1, plan.reason
        assert plan.reason == "below minimum (0 < 3); only 1 machine(s) available now"

        # Taken by another instance: nothing to order, and the decision says why.
        async with sessionmaker() as session:
            row = await session.get(Machine, free.id)
            assert row is not None
            row.claimed_by = uuid.uuid4()
            session.add(row)
            await session.commit()
        plan = await _assess(activities, deployment)
        assert (plan.delta, plan.reason) == (0, "below minimum (0 < 3); no machine available now")

        # The evening slot opens: that machine counts again.
        clock["now"] = MONDAY_NOON.replace(hour=21)
        assert (await _assess(activities, deployment)).delta == 1
    finally:
        await tunnel.close()


async def test_free_bare_metal_hosts_cap_it_too_and_clouds_do_not(
    settings: Settings, sessionmaker: Any, redis_client: aioredis.Redis
) -> None:
    assert settings.database_url
    ssh = SSHCompute(SSHSettings(enabled=True), settings.database_url)
    local = LocalCompute(settings)
    activities = AutoscaleActivities(
        sessionmaker, redis_client, _unused, _unused, providers={"ssh": ssh, "local": local}
    )
    async with sessionmaker() as session:
        on_hosts = await seed(session, provider_kind="ssh", instance_type="bm-1gpu")
        deployment = await _wants_three(session, on_hosts.deployment)
        for n in range(2):
            session.add(
                BareMetalHost(
                    name=f"bm-{n}-{uuid.uuid4().hex[:6]}",
                    address="192.0.2.10",
                    user="inventiv",
                    private_key_ref="file:/nonexistent",
                    host_key="ssh-ed25519 AAAA",
                    instance_type="bm-1gpu",
                )
            )
        on_cloud = await seed(session)
        cloud_deployment = await _wants_three(session, on_cloud.deployment)
        await session.commit()
    try:
        plan = await _assess(activities, deployment)
        assert (plan.delta, plan.reason) == (
            2,
            "below minimum (0 < 3); only 2 machine(s) available now",
        )
        plan = await _assess(activities, cloud_deployment)
        assert (plan.delta, plan.reason) == (3, "below minimum (0 < 3)")
    finally:
        await ssh.close()
