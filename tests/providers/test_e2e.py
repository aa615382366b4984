"""End to end through the lifecycle workflow (real Temporal, PostgreSQL, Redis): an instance on
the SSH host really boots to `ready` and is terminated with nothing left; on the AWS stand-in
(where no machine runs anything) provisioning fails at the agent step and the cleanup leaves
nothing billed but the volume asked to be kept."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest
from mypy_boto3_ec2 import EC2Client
from sqlmodel import select

from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.settings import AWSSettings
from activities.providers.ssh.adapter import SSHCompute
from activities.providers.ssh.settings import SSHSettings
from core.embedded import free_port
from core.models import BareMetalHost, InstanceState, InstanceVolume
from core.settings import Settings
from core.states import is_legal_path
from tests.factories import seed
from tests.providers.conftest import SSHHost
from tests.workflows.helpers import engine_headers, history, running_worker, wait_state
from workflows.client import create_instance, terminate_instance

S = InstanceState


async def test_ssh_instance_ready_then_terminated(
    settings: Settings, sessionmaker: Any, temporal_client: Any, ssh_host: SSHHost
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="ssh", instance_type="bare-metal",
            engine_args={"model-load-delay-s": 0.2},
        )  # fmt: skip
        host = BareMetalHost(
            name="bm-e2e", address="127.0.0.1", port=ssh_host.port, user="inventiv",
            private_key_ref=f"file:{ssh_host.client_key_path}", host_key=ssh_host.public_host_key(),
            python=sys.executable, agent_port=free_port(), engine_port=free_port(),
        )  # fmt: skip
        session.add(host)
        await session.commit()
    assert settings.database_url
    compute = SSHCompute(SSHSettings(enabled=True, tenant_users=False), settings.database_url)
    try:
        async with running_worker(settings, temporal_client, {"ssh": compute}):
            async with sessionmaker() as session:
                instance = await create_instance(
                    session, temporal_client, settings.task_queue, deployment=seeded.deployment
                )
            ready = await wait_state(sessionmaker, instance.id, S.ready, timeout=120)
            assert ready.agent_url == f"http://127.0.0.1:{host.agent_port}"
            assert ready.agent_integrity_ok is True
            body = {"model": "test-model", "prompt": "hello", "max_tokens": 4}
            async with httpx.AsyncClient() as http:
                url = f"{ready.engine_url}/v1/completions"
                stranger = await http.post(url, json=body)
                answer = await http.post(
                    url, json=body, headers=engine_headers(settings, instance.id)
                )
            # the host's engine has the instance's key (through SSH, in the agent's environment)
            assert stranger.status_code == 401 and answer.status_code == 200

            await terminate_instance(temporal_client, instance.workflow_id)
            await wait_state(sessionmaker, instance.id, S.terminated, timeout=90)
        async with sessionmaker() as session:
            fresh = await session.get(BareMetalHost, host.id)
            assert fresh is not None and fresh.claimed_by is None  # the host is free again
        assert not (ssh_host.home / ".inventiv" / str(instance.id)).exists()
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.TransportError):
                await http.get(f"{ready.agent_url}/healthz")
        assert is_legal_path(await history(sessionmaker, instance.id))
    finally:
        await compute.close()


async def test_aws_failed_boot_leaves_nothing(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    aws_settings: AWSSettings,
    ec2: EC2Client,
) -> None:
    volumes = [{"size_gb": 8}, {"size_gb": 4, "delete_on_terminate": False}]
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="aws", instance_type="t3.medium", boot_timeout_s=3,
            engine_args={"volumes": volumes},
        )  # fmt: skip
    compute = AWSCompute(aws_settings.model_copy(update={"elastic_ip": True}))
    async with running_worker(settings, temporal_client, {"aws": compute}):
        async with sessionmaker() as session:
            instance = await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
        done = await wait_state(sessionmaker, instance.id, S.terminated, timeout=120)
    assert S.startup_failed in await history(sessionmaker, instance.id)
    assert done.provider_resource_id and done.provider_resource_id.startswith("i-")

    tag = [{"Name": "tag:inventiv-instance-id", "Values": [str(instance.id)]}]
    live = [
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
    ]
    assert ec2.describe_instances(Filters=tag + live)["Reservations"] == []  # type: ignore[arg-type]
    assert ec2.describe_addresses(Filters=tag)["Addresses"] == []  # type: ignore[arg-type]
    left = ec2.describe_volumes(Filters=tag)["Volumes"]  # type: ignore[arg-type]
    assert [(v["Size"], v["State"]) for v in left] == [(4, "available")]  # kept, as asked
    async with sessionmaker() as session:
        rows = (
            await session.exec(
                select(InstanceVolume).where(InstanceVolume.instance_id == instance.id)
            )
        ).all()
    assert sorted((r.size_gb, r.is_boot, r.state) for r in rows) == [
        (4, False, "kept"),
        (8, False, "deleted"),
        (100, True, "deleted"),
    ]
