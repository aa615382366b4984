"""Golden files: what a machine receives, for every flavor on every provider that renders it.

The clouds (aws, scaleway) are driven through their adapters against their stand-ins (moto, the
fake Scaleway API) and the user data the stand-in received is compared with
`tests/providers/golden/<kind>/<flavor>.txt`; `ssh` renders the agent's env file and the command
the adapter runs on the host (plain process, or `docker run` of the worker image on a GPU host).
A flavor a provider cannot run is recorded with the adapter's refusal. `local` and `tunnel` render
neither cloud-init nor a docker command. Inputs are fixed and the secrets are placeholders; ids
the stand-ins draw at random are replaced by `<volume-id>`. After a deliberate change:
`INVENTIV_UPDATE_GOLDEN=1 .venv/bin/pytest tests/providers/test_golden_renders.py`, then review
the diff of the golden files.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import uuid
from pathlib import Path

import pytest

from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.catalogue import AWS_OFFERS
from activities.providers.aws.catalogue import MACHINE_IMAGES as AWS_IMAGES
from activities.providers.aws.settings import AWSSettings
from activities.providers.base import CreateRequest, InstanceOffer, ProviderError, VolumeSpec
from activities.providers.cloud_init import env_file, read_bootstrap
from activities.providers.flavors import FLAVORS, agent_environment
from activities.providers.scaleway.adapter import ScalewayCompute
from activities.providers.scaleway.catalogue import SCALEWAY_OFFERS
from activities.providers.scaleway.settings import ScalewaySettings
from activities.providers.ssh.adapter import SSHCompute
from activities.providers.ssh.settings import SSHSettings
from core.models import BareMetalHost
from tests.providers.conftest import IMAGES
from tests.providers.fake_scaleway import FakeScaleway

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("INVENTIV_UPDATE_GOLDEN") == "1"
INSTANCE_ID = "00000000-0000-4000-8000-000000000001"
# Placeholders where the control plane puts the per-instance token and the bundle's checksum.
AGENT_ENV = {
    "INVENTIV_AGENT_TOKEN": "<agent-token>",
    "INVENTIV_AGENT_CONTROL_PLANE_URL": "https://control-plane.example",
    "WORKER_AGENT_URL": "https://control-plane.example/api/v1/agents/bundle",
    "WORKER_AGENT_SHA256": "<agent-bundle-sha256>",
}
BOOTSTRAP_PLACEHOLDER = "<agent/bootstrap.sh, verbatim>"


def _offer_for(flavor_name: str, offers: tuple[InstanceOffer, ...] | list[InstanceOffer]) -> str:
    """The instance type a user would pick for the flavor; the first offer when none fits, so
    the adapter's own refusal is what the golden file records."""
    flavor = FLAVORS[flavor_name]
    for offer in offers:
        if (flavor.accelerator == "cpu") == (offer.gpu_count == 0) and (
            not flavor.gpu_models or offer.gpu_model in flavor.gpu_models
        ):
            return offer.name
    return offers[0].name


def _request(flavor: str, instance_type: str, gpu_count: int, volume_gb: int) -> CreateRequest:
    return CreateRequest(
        instance_id=INSTANCE_ID,
        instance_type=instance_type,
        model="meta-llama/Llama-3.1-8B-Instruct",
        served_name="llama-8b",
        flavor=flavor,
        gpu_count=gpu_count,
        volumes=[VolumeSpec(size_gb=volume_gb)] if volume_gb else [],
        agent_env=AGENT_ENV,
    )


def _normalised_user_data(user_data: str) -> str:
    """The user data with the bootstrap script (checked verbatim here, not in every golden file)
    and the stand-in's random volume ids replaced."""
    assert user_data.startswith("#cloud-config\n")
    document = json.loads(user_data.split("\n", 1)[1])
    for item in document["write_files"]:
        if item["path"].endswith("bootstrap.sh"):
            assert item["content"] == read_bootstrap()
            item["content"] = BOOTSTRAP_PLACEHOLDER
    text = "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
    text = re.sub(r"vol-?[0-9a-f]{8,17}\b", "<volume-id>", text)
    uuids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))
    for found in uuids - {INSTANCE_ID}:
        text = text.replace(found, "<volume-id>")
    return text


def _runcmd_lines(user_data: str) -> str:
    """The shell lines of runcmd, one per line, so a changed docker flag reads in the diff."""
    document = json.loads(user_data.split("\n", 1)[1])
    return "".join(
        f"$ {cmd[2] if cmd[:2] == ['sh', '-c'] else cmd}\n" for cmd in document["runcmd"]
    )


def check_golden(kind: str, flavor: str, rendered: str) -> None:
    path = GOLDEN / kind / f"{flavor}.txt"
    assert "tok-secret" not in rendered and "testing-secret" not in rendered
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
        return
    if not path.exists():
        pytest.fail(f"{path} missing: INVENTIV_UPDATE_GOLDEN=1 writes it")
    expected = path.read_text()
    if rendered != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"golden/{kind}/{flavor}.txt",
                tofile="rendered",
            )
        )
        pytest.fail(
            f"{kind} with {flavor} renders differently from its golden file "
            f"(INVENTIV_UPDATE_GOLDEN=1 regenerates it once the change is intended):\n{diff}"
        )


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
async def test_aws_user_data(flavor: str, aws_settings: AWSSettings, ec2: object) -> None:
    ami = aws_settings.ami_ids["cpu-sim"]
    # Moto holds none of the real AMIs: the flavors that have one on AWS boot moto's.
    settings = aws_settings.model_copy(
        update={"ami_ids": {name: ami for name in AWS_IMAGES}, "model_s3_prefix": None}
    )
    compute = AWSCompute(settings, IMAGES)
    instance_type = _offer_for(flavor, AWS_OFFERS)
    offer = next(o for o in AWS_OFFERS if o.name == instance_type)
    request = _request(flavor, instance_type, offer.gpu_count, 50)
    try:
        created = await compute.create(request)
    except ProviderError as exc:
        rendered = f"refused ({type(exc).__name__}): {exc}\n"
    else:
        value = ec2.describe_instance_attribute(  # type: ignore[attr-defined]
            InstanceId=created.resource_id, Attribute="userData"
        )["UserData"]["Value"]
        user_data = _normalised_user_data(base64.b64decode(value).decode())
        rendered = f"# {instance_type}\n{user_data}\n{_runcmd_lines(user_data)}"
        await compute.delete(created.resource_id)
    finally:
        await compute.close()
    check_golden("aws", flavor, rendered)


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
async def test_scaleway_user_data(
    flavor: str, scaleway_settings: ScalewaySettings, fake_scaleway: FakeScaleway
) -> None:
    compute = ScalewayCompute(scaleway_settings, IMAGES)
    instance_type = _offer_for(flavor, SCALEWAY_OFFERS)
    offer = next(o for o in SCALEWAY_OFFERS if o.name == instance_type)
    request = _request(flavor, instance_type, offer.gpu_count, 200)
    try:
        created = await compute.create(request)
    except ProviderError as exc:
        rendered = f"refused ({type(exc).__name__}): {exc}\n"
    else:
        server_id = created.resource_id.split("/")[1]
        user_data = _normalised_user_data(
            fake_scaleway.user_data[(server_id, "cloud-init")].decode()
        )
        rendered = f"# {instance_type}\n{user_data}\n{_runcmd_lines(user_data)}"
    finally:
        await compute.close()
    check_golden("scaleway", flavor, rendered)


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_ssh_env_and_launch_command(flavor: str) -> None:
    compute = SSHCompute(SSHSettings(), "postgresql+asyncpg://unused/unused", IMAGES)
    gpu = FLAVORS[flavor].accelerator != "cpu"
    host = BareMetalHost(
        id=uuid.UUID(int=7),
        name="gpu-box" if gpu else "cpu-box",
        address="192.0.2.10",
        user="inventiv",
        private_key_ref="file:/etc/inventiv/id_ed25519",
        python="/usr/bin/python3",
        gpu_inventory=[{"model": FLAVORS[flavor].gpu_models[0], "memory_gb": 80}] * 2
        if gpu
        else [],
    )
    request = _request(flavor, host.instance_type, 2 if gpu else 0, 0)
    env = agent_environment(
        request, python=host.python, agent_port=host.agent_port, engine_port=host.engine_port
    )
    # What `_install` decides on a host with GPUs and docker: the worker image; else a process
    # under a user of its own (INVENTIV_SSH_TENANT_USERS, the default).
    image = IMAGES.image(FLAVORS[flavor]) if gpu else None
    command, log = compute._launch_command(request, host, env, image, tenant=not image)
    check_golden(
        "ssh",
        flavor,
        f"# agent.env\n{env_file(env)}\n# launch\n$ {command}\n\n# log\n$ {log}\n",
    )
