"""An instance on the AWS stand-in all the way to `ready` and back: the lifecycle workflow
creates it with boto3 on moto's EC2 server, the machine's cloud-init (emulated) runs the real
bootstrap, which downloads the agent from the API and verifies its checksum; the agent sends
heartbeats, the engine answers through the gateway, and termination leaves nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
from mypy_boto3_ec2 import EC2Client

from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.settings import AWSSettings
from api.app import create_app
from core.models import InstanceState
from core.settings import Settings
from core.states import is_legal_path
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.providers.cloud_machines import CloudInitEmulator
from tests.workflows.helpers import history, running_worker, wait_state
from workflows.client import create_instance, terminate_instance

S = InstanceState


async def test_aws_instance_boots_serves_and_terminates(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    aws_settings: AWSSettings,
    ec2: EC2Client,
    tmp_path: Path,
) -> None:
    vpc = ec2.create_vpc(CidrBlock="127.64.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.64.1.0/24")["Subnet"]["SubnetId"]
    compute = AWSCompute(
        aws_settings.model_copy(update={"subnet_id": subnet, "use_private_ip": True})
    )
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="aws", instance_type="t3.medium", model="aws-model",
            engine_args={"model-load-delay-s": 0.2, "volumes": [{"size_gb": 8}]},
            boot_timeout_s=120,
        )  # fmt: skip
    api = RunningServer(create_app(settings), settings.api_port)
    gateway = RunningServer(create_gateway(settings), settings.gateway_port)
    await api.start()
    await gateway.start()
    try:
        async with (
            CloudInitEmulator(ec2, tmp_path / "machines") as machines,
            running_worker(settings, temporal_client, {"aws": compute}),
        ):
            async with sessionmaker() as session:
                instance = await create_instance(
                    session, temporal_client, settings.task_queue, deployment=seeded.deployment
                )
            ready = await wait_state(sessionmaker, instance.id, S.ready, timeout=120)
            assert ready.ip_address and ready.ip_address.startswith("127.64.1.")
            assert ready.agent_url == f"http://{ready.ip_address}:8090"
            assert ready.agent_integrity_ok is True
            [log] = machines.boot_logs.values()
            assert "agent bundle checksum verified" in log.read_text()
            assert list(machines.mounts) == [ready.provider_resource_id]  # the 8 GB data volume

            client = openai.AsyncOpenAI(
                api_key=seeded.api_key, base_url=f"{gateway.url}/v1", max_retries=0
            )
            reply = await client.chat.completions.create(
                model="aws-model", messages=[{"role": "user", "content": "hi from EC2"}]
            )
            assert reply.choices[0].message.content
            for _ in range(100):  # the agent heartbeats every few seconds
                async with sessionmaker() as session:
                    fresh = await session.get(type(ready), instance.id)
                if fresh is not None and fresh.last_heartbeat_at is not None:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("no heartbeat reached the API")

            await terminate_instance(temporal_client, instance.workflow_id)
            await wait_state(sessionmaker, instance.id, S.terminated, timeout=120)
            await machines.catch_up()  # EC2 says terminated: the emulator halts it now
            assert machines.booted == {}, "the machine's processes are gone"
    finally:
        await gateway.stop()
        await api.stop()
        await compute.close()

    tag = [{"Name": "tag:inventiv-instance-id", "Values": [str(instance.id)]}]
    instances = ec2.describe_instances(Filters=tag)["Reservations"]  # type: ignore[arg-type]
    assert {i["State"]["Name"] for r in instances for i in r["Instances"]} == {"terminated"}
    assert ec2.describe_volumes(Filters=tag)["Volumes"] == []  # type: ignore[arg-type]
    assert is_legal_path(await history(sessionmaker, instance.id))
