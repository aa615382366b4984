"""One contract, every registered provider, each against its stand-in: create -> get -> list
tagged -> volumes -> delete (prompt; retried while "not yet gone") -> delete again is a no-op ->
list tagged is empty, nothing left; a retried create returns the first resource.

The suite runs once per entry of the registry: a new provider kind needs a `<kind>_stand` fixture
here (docs/providers.md), or this test fails for it."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mypy_boto3_ec2 import EC2Client
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import (
    INSTANCE_TAG,
    Capability,
    Compute,
    CreateRequest,
    PublicIPMixin,
    VolumeSpec,
)
from activities.providers.local.adapter import LocalCompute, machine_pids
from activities.providers.local.catalogue import LOCAL_INSTANCE_TYPE
from activities.providers.registry import PROVIDERS
from activities.providers.scaleway.adapter import ScalewayCompute
from activities.providers.scaleway.settings import ScalewaySettings
from activities.providers.ssh.adapter import SSHCompute
from activities.providers.ssh.settings import SSHSettings
from activities.providers.tunnel.adapter import TunnelCompute
from agent.identity import bundled_agent
from core.embedded import free_port
from core.models import BareMetalHost, Machine
from core.settings import Settings
from tests.providers.conftest import SSHHost
from tests.providers.fake_scaleway import FakeScaleway
from tests.providers.teardown import delete_until_gone
from tests.tunnel.helpers import connected_machine, eventually, tunnel_settings

AGENT_SHA256 = bundled_agent().checksum


@dataclass
class Stand:
    compute: Compute
    request: CreateRequest
    nothing_left: Callable[[], Awaitable[None]]  # asserts the stand-in holds nothing of ours


def _request(instance_type: str, volumes: list[VolumeSpec]) -> CreateRequest:
    return CreateRequest(
        instance_id=str(uuid.uuid4()),
        instance_type=instance_type,
        model="demo-llm",
        served_name="demo",
        flavor="cpu-sim",
        volumes=volumes,
        agent_env={"WORKER_AGENT_SHA256": AGENT_SHA256},
    )


@pytest.fixture
def local_stand(tmp_path: Path) -> Stand:
    compute = LocalCompute(Settings(data_dir=tmp_path))
    request = _request(LOCAL_INSTANCE_TYPE, [VolumeSpec(size_gb=30)])

    async def nothing_left() -> None:
        assert list(compute.machines.glob("*.json")) == []
        assert list(compute.volumes.glob("*")) == []
        assert machine_pids(request.instance_id) == []

    return Stand(compute, request, nothing_left)


@pytest.fixture
def aws_stand(aws_settings: AWSSettings, ec2: EC2Client) -> Stand:
    request = _request("t3.medium", [VolumeSpec(size_gb=30)])

    async def nothing_left() -> None:
        tag = [{"Name": f"tag:{INSTANCE_TAG}", "Values": [request.instance_id]}]
        live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}]
        assert ec2.describe_instances(Filters=tag + live)["Reservations"] == []  # type: ignore[arg-type]
        assert ec2.describe_volumes(Filters=tag)["Volumes"] == []  # type: ignore[arg-type]
        assert ec2.describe_addresses(Filters=tag)["Addresses"] == []  # type: ignore[arg-type]

    compute = AWSCompute(aws_settings.model_copy(update={"elastic_ip": True}))
    return Stand(compute, request, nothing_left)


@pytest.fixture
def scaleway_stand(scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway) -> Stand:
    async def nothing_left() -> None:
        assert fake_scaleway.leftovers() == {
            "servers": [], "ips": [], "local_volumes": [], "block_volumes": []
        }  # fmt: skip

    request = _request("PRO2-XXS", [VolumeSpec(size_gb=30)])
    return Stand(ScalewayCompute(scaleway_settings), request, nothing_left)


@pytest.fixture
async def ssh_stand(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], ssh_host: SSHHost
) -> AsyncIterator[Stand]:
    host = BareMetalHost(
        name="bm-1", address="127.0.0.1", port=ssh_host.port, user="inventiv",
        private_key_ref=f"file:{ssh_host.client_key_path}", host_key=ssh_host.public_host_key(),
        python=sys.executable, agent_port=free_port(), engine_port=free_port(),
    )  # fmt: skip
    async with sessionmaker() as session:
        session.add(host)
        await session.commit()
    request = _request("bare-metal", [])

    async def nothing_left() -> None:
        async with sessionmaker() as session:
            fresh = await session.get(BareMetalHost, host.id)
            assert fresh is not None and fresh.claimed_by is None
        assert not (ssh_host.home / ".inventiv" / request.instance_id).exists()
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{host.agent_port}/healthz")

    compute = SSHCompute(SSHSettings(enabled=True, tenant_users=False), db_url)
    yield Stand(compute, request, nothing_left)
    await compute.close()


@pytest.fixture
async def tunnel_stand(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stand]:
    tunnel = tunnel_settings(monkeypatch)
    assert settings.database_url
    compute = TunnelCompute(tunnel, settings.database_url)
    request = _request("tunnel", [])
    async with connected_machine(settings, tunnel, sessionmaker, tmp_path / "m") as machine:

        async def nothing_left() -> None:
            async def released() -> bool:
                async with sessionmaker() as session:
                    row = await session.get(Machine, machine.machine_id)
                return row is not None and row.claimed_by is None and row.running_instance is None

            await eventually(released, 30, "the machine released and its engine stopped")
            assert machine.process.poll() is None  # released, never powered off

        yield Stand(compute, request, nothing_left)
    await compute.close()


@pytest.fixture(params=list(PROVIDERS))
def stand(request: pytest.FixtureRequest) -> Stand:
    return request.getfixturevalue(f"{request.param}_stand")  # type: ignore[no-any-return]


async def test_contract(stand: Stand) -> None:
    compute, request = stand.compute, stand.request
    created = await compute.create(request)
    assert created.instance_id == request.instance_id
    retried = await compute.create(request)
    assert retried.resource_id == created.resource_id

    await compute.start(created.resource_id)
    got = await compute.get(created.resource_id)
    assert got is not None and got.instance_id == request.instance_id
    assert got.state in ("pending", "running") and got.agent_url
    assert created.resource_id in [i.resource_id for i in await compute.list_tagged()]

    volumes = await compute.list_volumes(created.resource_id)
    # create reports the volumes it made (boot included), so they are tracked from the start
    assert sorted(v.volume_id for v in created.volumes) == sorted(v.volume_id for v in volumes)
    with_volumes = Capability.volumes in PROVIDERS[compute.kind].capabilities
    assert len(volumes) == (2 if with_volumes else 0)  # boot + data
    assert sum(v.is_boot for v in volumes) == (1 if with_volumes else 0)

    await delete_until_gone(compute, created.resource_id)  # prompt; retried while not yet gone
    for volume in volumes:
        if volume.delete_on_terminate:
            await compute.delete_volume(volume.volume_id)
    if isinstance(compute, PublicIPMixin):
        await compute.release_ips(created.resource_id, request.instance_id)
    await compute.delete(created.resource_id)  # again: a no-op
    assert await compute.get(created.resource_id) is None
    assert created.resource_id not in [i.resource_id for i in await compute.list_tagged()]
    assert [
        v for v in await compute.list_tagged_volumes() if v.instance_id == request.instance_id
    ] == []
    await stand.nothing_left()
