"""Scaleway adapter: the real `scaleway` SDK against a local server speaking the API's JSON."""

from __future__ import annotations

import json
import logging
import uuid

import httpx
import pytest
from pydantic import SecretStr

from activities.providers.base import (
    INSTANCE_TAG,
    CreateRequest,
    InvalidRequestError,
    NoCapacityError,
    ProviderInstance,
    ResourceNotYetGoneError,
    TransientProviderError,
    VolumeSpec,
)
from activities.providers.scaleway.adapter import ScalewayCompute, block_device, map_scaleway_error
from activities.providers.scaleway.settings import ScalewaySettings
from tests.providers.conftest import IMAGES
from tests.providers.fake_scaleway import FakeScaleway
from tests.providers.teardown import delete_until_gone

ZONE = r"/(instance|block)/v1/zones/fr-par-2"
ID = r"[0-9a-f-]+"


async def until_state(compute: ScalewayCompute, resource_id: str, state: str) -> ProviderInstance:
    """Read the server until it reaches `state` (power actions take a few reads)."""
    for _ in range(20):
        machine = await compute.get(resource_id)
        assert machine is not None
        if machine.state == state:
            return machine
    raise AssertionError(f"{resource_id} never reached {state}")


def _request(**kwargs: object) -> CreateRequest:
    base: dict[str, object] = {
        "instance_id": str(uuid.uuid4()),
        "instance_type": "L40S-1-48G",
        "flavor": "nvidia-cuda12",
        "model": "mistralai/Mistral-7B-Instruct-v0.3",
        "served_name": "mistral-7b",
        "agent_env": {"INVENTIV_AGENT_TOKEN": "tok-secret", "WORKER_AGENT_SHA256": "cd" * 32},
    }
    return CreateRequest(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "kind", "message", "error"),
    [
        (412, "out_of_stock", "H100-2-80G is out of stock", NoCapacityError),
        (403, "quotas_exceeded", "Quotas exceeded: GPU", NoCapacityError),
        (400, "invalid_arguments", "bad image", InvalidRequestError),
        (401, "denied_authentication", "invalid token", InvalidRequestError),
        (412, "precondition_failed", "resource_still_in_use", TransientProviderError),
        (429, "too_many_requests", "slow down", TransientProviderError),
        (503, "", "maintenance", TransientProviderError),
    ],
)
def test_error_mapping(status: int, kind: str, message: str, error: type[Exception]) -> None:
    mapped = map_scaleway_error(status, kind, message)
    assert type(mapped) is error and message in str(mapped)


async def test_create_tracks_and_cleans_everything(
    scaleway_settings: ScalewaySettings,
    fake_scaleway: FakeScaleway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = scaleway_settings.model_copy(update={"private_network_id": str(uuid.uuid4())})
    compute = ScalewayCompute(settings, IMAGES)
    request = _request(
        volumes=[VolumeSpec(size_gb=200), VolumeSpec(size_gb=50, delete_on_terminate=False)]
    )
    created = await compute.create(request)
    assert created.state == "stopped" and created.instance_id == request.instance_id
    server_id = created.resource_id.split("/")[1]
    assert fake_scaleway.servers[server_id]["commercial_type"] == "L40S-1-48G"
    assert f"{INSTANCE_TAG}={request.instance_id}" in fake_scaleway.servers[server_id]["tags"]
    create_call = next(
        c for c in fake_scaleway.calls if c.method == "POST" and c.path.endswith("/servers")
    )
    assert create_call.body["image"] == "ubuntu_jammy_gpu_os_12"
    assert create_call.body["volumes"]["0"]["volume_type"] == "sbs_volume"  # diskless boot
    assert len(fake_scaleway.ips) == 1 and len(fake_scaleway.servers[server_id]["nics"]) == 1

    # The user data mounts the first block volume as the model cache and carries the agent env.
    user_data = fake_scaleway.user_data[(server_id, "cloud-init")].decode()
    document = json.loads(user_data.split("\n", 1)[1])
    env = document["write_files"][0]["content"]
    assert "INVENTIV_AGENT_MODEL_CACHE_DIR=/mnt/models" in env
    assert "WORKER_AGENT_SHA256=" + "cd" * 32 in env
    assert document["write_files"][0]["permissions"] == "0600"
    volumes = {v.size_gb: v for v in await compute.list_volumes(created.resource_id)}
    assert set(volumes) == {100, 200, 50}
    assert volumes[100].is_boot and volumes[100].instance_id == request.instance_id
    assert block_device(volumes[200].volume_id.split("/")[1]) in document["runcmd"][0][2]
    assert not volumes[50].delete_on_terminate and volumes[200].delete_on_terminate

    # Neither the agent's token nor the API secret reached a log line, even at DEBUG.
    assert "tok-secret" not in caplog.text and fake_scaleway.token not in caplog.text

    # A retried create finds the same server and makes nothing new.
    again = await compute.create(request)
    assert again.resource_id == created.resource_id
    assert fake_scaleway.count("POST", ZONE + "/servers") == 1
    assert fake_scaleway.count("POST", ZONE + "/ips") == 1
    assert len(fake_scaleway.block_volumes) == 3

    await compute.start(created.resource_id)
    running = await until_state(compute, created.resource_id, "running")
    assert running.ip_address == next(iter(fake_scaleway.ips.values()))["address"]

    # A running server can't go: delete powers it off and says so, without waiting for it.
    with pytest.raises(ResourceNotYetGoneError, match="powering off"):
        await compute.delete(created.resource_id)
    assert fake_scaleway.count("POST", ZONE + f"/servers/{ID}/action") == 2
    assert await compute.get(created.resource_id) is not None
    await delete_until_gone(compute, created.resource_id)  # once stopped (a few reads)
    assert fake_scaleway.count("DELETE", ZONE + f"/servers/{ID}") == 1
    assert await compute.get(created.resource_id) is None
    await compute.delete(created.resource_id)  # idempotent
    for volume in volumes.values():
        if volume.delete_on_terminate:
            await compute.delete_volume(volume.volume_id)
            await compute.delete_volume(volume.volume_id)  # idempotent
    released = await compute.release_ips(created.resource_id, request.instance_id)
    assert released == [running.ip_address]
    left = fake_scaleway.leftovers()
    assert left["servers"] == [] and left["ips"] == [] and left["local_volumes"] == []
    assert left["block_volumes"] == [volumes[50].volume_id.split("/")[1]]  # persistent: kept
    assert [v.size_gb for v in await compute.list_tagged_volumes()] == [50]


@pytest.mark.parametrize("instance_type", ["L40S-1-48G", "L4-1-24G"])
async def test_diskless_types_refuse_local_volumes(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway, instance_type: str
) -> None:
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    request = _request(instance_type=instance_type, volumes=[VolumeSpec(100, volume_type="local")])
    with pytest.raises(InvalidRequestError, match=f"{instance_type} has no local storage"):
        await compute.create(request)
    assert not [c for c in fake_scaleway.calls if c.method != "GET"]  # nothing was made


async def test_local_volume_on_a_type_with_local_storage(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    compute = ScalewayCompute(scaleway_settings.model_copy(update={"flexible_ip": False}), IMAGES)
    request = _request(instance_type="GPU-3070-S", volumes=[VolumeSpec(100, volume_type="local")])
    created = await compute.create(request)
    volumes = await compute.list_volumes(created.resource_id)
    assert sorted((v.volume_type, v.is_boot) for v in volumes) == [
        ("l_ssd", False),
        ("sbs_volume", True),
    ]
    await delete_until_gone(compute, created.resource_id)
    for volume in volumes:
        await compute.delete_volume(volume.volume_id)
    assert fake_scaleway.leftovers() == {
        "servers": [], "ips": [], "local_volumes": [], "block_volumes": []
    }  # fmt: skip
    with pytest.raises(InvalidRequestError, match="cannot outlive"):
        await compute.create(
            _request(
                instance_type="GPU-3070-S",
                volumes=[VolumeSpec(10, volume_type="local", delete_on_terminate=False)],
            )
        )


async def test_out_of_stock_is_no_capacity_and_leaves_nothing(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    fake_scaleway.out_of_stock.add("H100-2-80G")
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    request = _request(instance_type="H100-2-80G", flavor="nvidia-h100", volumes=[VolumeSpec(10)])
    with pytest.raises(NoCapacityError, match="out of stock") as info:
        await compute.create(request)
    assert info.value.retryable is False
    assert fake_scaleway.count("POST", ZONE + "/ips") == 1  # made, then discarded
    assert fake_scaleway.leftovers() == {
        "servers": [], "ips": [], "local_volumes": [], "block_volumes": []
    }  # fmt: skip


async def test_bad_credentials_and_unknown_types(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    with pytest.raises(InvalidRequestError, match="unknown Scaleway type 'X-1'"):
        await ScalewayCompute(scaleway_settings, IMAGES).create(_request(instance_type="X-1"))
    with pytest.raises(InvalidRequestError, match="needs one of MI300X GPUs"):
        await ScalewayCompute(scaleway_settings, IMAGES).create(
            _request(instance_type="H100-1-80G", flavor="amd-mi300")
        )
    wrong = ScalewayCompute(
        scaleway_settings.model_copy(update={"secret_key": SecretStr(str(uuid.uuid4()))})
    )
    with pytest.raises(InvalidRequestError, match="401 denied_authentication"):
        await wrong.list_tagged()
    malformed = scaleway_settings.model_copy(update={"secret_key": SecretStr("hunter2-secret")})
    with pytest.raises(InvalidRequestError, match="malformed Scaleway settings") as info:
        ScalewayCompute(malformed)
    assert "hunter2" not in str(info.value) and info.value.__cause__ is None


async def test_a_type_in_shortage_is_refused_before_anything_is_made(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    fake_scaleway.availability["H100-2-80G"] = "shortage"
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    request = _request(instance_type="H100-2-80G", flavor="nvidia-h100", volumes=[VolumeSpec(10)])
    with pytest.raises(NoCapacityError, match="shortage of H100-2-80G in fr-par-2") as info:
        await compute.create(request)
    assert info.value.retryable is False
    assert fake_scaleway.count("GET", ZONE + "/products/servers/availability") == 1
    assert [c for c in fake_scaleway.calls if c.method != "GET"] == []  # nothing was made
    fake_scaleway.availability["H100-2-80G"] = "scarce"  # scarce is not refused
    assert (await compute.create(request)).state == "stopped"


async def test_stock_refused_at_poweron_is_no_capacity_at_once(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    """Scaleway allocates the hypervisor at poweron: a create can succeed and the start fail."""
    fake_scaleway.no_stock_at_poweron.add("L40S-1-48G")
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    created = await compute.create(_request())
    with pytest.raises(NoCapacityError, match="out of stock: no L40S-1-48G available") as info:
        await compute.start(created.resource_id)
    assert info.value.retryable is False  # the lifecycle reports no capacity, not a boot timeout
    stopped = await compute.get(created.resource_id)
    assert stopped is not None and stopped.state == "stopped"
    await delete_until_gone(compute, created.resource_id)  # and it can be cleaned up


async def test_power_actions_and_new_volumes_take_several_reads(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    fake_scaleway.transition_reads = 3
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    # The fake refuses a server on a `creating` volume: create waited for it to be available.
    created = await compute.create(_request(volumes=[VolumeSpec(size_gb=20)]))
    assert fake_scaleway.count("GET", ZONE + f"/volumes/{ID}") >= 3
    await compute.start(created.resource_id)
    states = [(await compute.get(created.resource_id)).state for _ in range(3)]  # type: ignore[union-attr]
    assert states == ["pending", "pending", "running"]
    await delete_until_gone(compute, created.resource_id)
    [data] = [v for v in created.volumes if not v.is_boot]
    await compute.delete_volume(data.volume_id)
    await compute.delete_volume(data.volume_id)  # `deleting`: asked already, a no-op
    assert data.volume_id not in [v.volume_id for v in await compute.list_tagged_volumes()]


async def test_terminate_deletes_attached_volumes_which_is_why_the_adapter_never_uses_it(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    """Scaleway's documented `terminate`: the server goes with every attached volume, local and
    block, and a block volume to keep must be detached first; flexible IPs are only detached.
    The adapter powers off and deletes instead, so a persistent volume survives."""
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    request = _request(volumes=[VolumeSpec(size_gb=20, delete_on_terminate=False)])
    created = await compute.create(request)
    zone, server_id = created.resource_id.split("/")
    async with httpx.AsyncClient(
        base_url=fake_scaleway.url, headers={"x-auth-token": fake_scaleway.token}
    ) as api:
        action = f"/instance/v1/zones/{zone}/servers/{server_id}/action"
        assert (await api.post(action, json={"action": "terminate"})).status_code == 202
        for _ in range(fake_scaleway.transition_reads + 1):
            await api.get(f"/instance/v1/zones/{zone}/servers")
    left = fake_scaleway.leftovers()
    assert left["servers"] == [] and left["block_volumes"] == []  # the kept volume went too
    assert len(left["ips"]) == 1  # detached, still billed: release_ips deletes it
    await compute.release_ips(created.resource_id, request.instance_id)


async def test_catalogue_from_the_product_api_with_the_static_table_as_fallback(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    fake_scaleway.prices["H100-1-80G"] = 2.52  # a price change the static table does not know
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    live = {o.name: o for o in await compute.live_catalogue()}
    assert {o.price_source for o in live.values()} == {"provider-api"}
    h100 = live["H100-1-80G"]
    assert (h100.price_per_hour, h100.gpu_count, h100.gpu_memory_gb, h100.vcpus) == (
        2.52, 1, 80, 24
    )  # fmt: skip
    assert h100.ram_gb == 240 and "fr-par-2" in h100.zones
    offline = ScalewayCompute(
        scaleway_settings.model_copy(update={"secret_key": SecretStr(str(uuid.uuid4()))}), IMAGES
    )  # every read refused (401): the static table, said so
    fallback = await offline.live_catalogue()
    assert {o.price_source for o in fallback} == {"static"}
    assert {o.name: o.price_per_hour for o in fallback}["H100-1-80G"] == 2.73


async def test_no_server_without_a_security_group(
    scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    """The engine and agent ports must not face the internet: no group, no server."""
    compute = ScalewayCompute(
        scaleway_settings.model_copy(update={"security_group_id": None}), IMAGES
    )
    with pytest.raises(InvalidRequestError, match="SECURITY_GROUP_ID"):
        await compute.create(_request())
