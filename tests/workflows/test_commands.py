"""Drain and terminate are updates: the workflow decides, and the caller hears its answer."""

from __future__ import annotations

import pytest

from core.models import InstanceState, TerminationReason
from core.settings import Settings
from tests.factories import seed
from tests.workflows.helpers import local_providers, provision, running_worker, wait_state
from workflows.client import (
    CommandRefusedError,
    WorkflowNotRunningError,
    drain_if_accepted,
    drain_instance,
    terminate_instance,
)

S = InstanceState


async def test_the_workflow_refuses_what_its_state_forbids(
    settings: Settings, sessionmaker, temporal_client
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, boot_timeout_s=120)
    providers = local_providers(settings, engine_never_ready=True)  # it stays booting
    async with running_worker(settings, temporal_client, providers):
        instance = await provision(sessionmaker, temporal_client, settings, seeded.deployment)
        await wait_state(sessionmaker, instance.id, S.booting)
        with pytest.raises(CommandRefusedError, match="only a ready instance can be drained"):
            await drain_instance(temporal_client, instance.workflow_id)
        assert not await drain_if_accepted(
            temporal_client, instance.workflow_id, TerminationReason.scale_down
        )
        await terminate_instance(temporal_client, instance.workflow_id)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
        assert done.termination_reason == "user_request"
        with pytest.raises(CommandRefusedError, match="already terminat"):
            await terminate_instance(temporal_client, instance.workflow_id)
    with pytest.raises(WorkflowNotRunningError):
        await terminate_instance(temporal_client, "instance-never-started")
