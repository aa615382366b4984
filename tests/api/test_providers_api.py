"""Providers, instance types, prices and bare-metal hosts through the API: admins only, and no
credential ever stored in clear or returned."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from cryptography.fernet import Fernet
from temporalio.client import Client

from activities.providers.registry import PROVIDERS
from core.models import BareMetalHost
from core.settings import Settings
from tests.api.conftest import Tenant
from tests.workflows.helpers import running_worker

BASE = "/api/v1/providers"
REPO = Path(__file__).resolve().parents[2]
CLOUD_SDKS = ("boto3", "botocore", "scaleway", "scaleway_core", "asyncssh")


async def test_members_are_refused(client: httpx.AsyncClient, alice: Tenant) -> None:
    assert (await client.get(BASE)).status_code == 401
    assert (await client.get(BASE, headers=alice.headers)).status_code == 403
    created = await client.post(BASE, json={"name": "x", "kind": "aws"}, headers=alice.headers)
    assert created.status_code == 403
    assert (await client.get(f"{BASE}/bare-metal-hosts", headers=alice.headers)).status_code == 403
    assert (await client.get(f"{BASE}/kinds", headers=alice.headers)).status_code == 403


async def test_provider_crud_refuses_credentials(client: httpx.AsyncClient, admin: Tenant) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/" + uuid.uuid4().hex
    refused = await client.post(
        BASE,
        json={"name": "aws-eu", "kind": "aws", "config": {"nested": {"Secret-Access-Key": secret}}},
        headers=admin.headers,
    )
    assert refused.status_code == 400
    assert "credentials come from the environment (INVENTIV_AWS_" in refused.text
    assert secret not in refused.text
    bad_kind = await client.post(BASE, json={"name": "x", "kind": "gcp"}, headers=admin.headers)
    assert bad_kind.status_code == 422
    assert "unknown provider kind 'gcp'; known: local, scaleway, aws, ssh" in bad_kind.text

    created = await client.post(
        BASE, json={"name": "aws-eu", "kind": "aws", "config": {"region": "eu-west-3"}},
        headers=admin.headers,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    provider = created.json()
    assert provider["config"] == {"region": "eu-west-3"} and provider["instance_types"] == 0
    again = await client.post(BASE, json={"name": "aws-eu", "kind": "aws"}, headers=admin.headers)
    assert again.status_code == 409

    patched = await client.patch(
        f"{BASE}/{provider['id']}", json={"enabled": False}, headers=admin.headers
    )
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    listed = await client.get(BASE, headers=admin.headers)
    assert "aws-eu" in [p["name"] for p in listed.json()]
    # The seeded provider has a deployment on it: it cannot go.
    in_use = await client.delete(f"{BASE}/{admin.provider.id}", headers=admin.headers)
    assert in_use.status_code == 409 and "disable it instead" in in_use.text
    assert (
        await client.delete(f"{BASE}/{provider['id']}", headers=admin.headers)
    ).status_code == 204
    assert (await client.get(f"{BASE}/{provider['id']}", headers=admin.headers)).status_code == 404


async def test_instance_types_and_prices(
    client: httpx.AsyncClient, admin: Tenant, settings: Settings, temporal_client: Client
) -> None:
    provider = (
        await client.post(BASE, json={"name": "scw", "kind": "scaleway"}, headers=admin.headers)
    ).json()
    types_url = f"{BASE}/{provider['id']}/instance-types"
    async with running_worker(settings, temporal_client, {}):  # Scaleway off there: its table
        synced = await client.post(f"{types_url}/sync", headers=admin.headers)
        resynced_early = await client.post(f"{types_url}/sync", headers=admin.headers)
    assert resynced_early.json() == synced.json()
    assert synced.status_code == 200
    by_name = {t["name"]: t for t in synced.json()}
    assert {"H100-1-80G", "H100-2-80G", "L40S-1-48G", "L4-1-24G", "GPU-3070-S"} <= set(by_name)
    h100 = by_name["H100-1-80G"]
    assert h100["gpu_model"] == "H100" and h100["gpu_memory_gb"] == 80 and h100["currency"] == "EUR"

    repriced = await client.patch(
        f"{types_url}/{h100['id']}", json={"price_per_hour": 2.5}, headers=admin.headers
    )
    assert repriced.status_code == 200 and repriced.json()["price_per_hour"] == 2.5
    async with running_worker(settings, temporal_client, {}):
        resynced = await client.post(f"{types_url}/sync", headers=admin.headers)
    assert {t["name"]: t for t in resynced.json()}["H100-1-80G"]["price_per_hour"] == 2.5
    assert len(resynced.json()) == len(synced.json())  # nothing duplicated

    custom = {"name": "H100-8-80G", "gpu_model": "H100", "gpu_count": 8, "price_per_hour": 21.8}
    made = await client.post(types_url, json=custom, headers=admin.headers)
    assert made.status_code == 201 and made.json()["gpu_count"] == 8
    assert (await client.post(types_url, json=custom, headers=admin.headers)).status_code == 409
    negative = await client.patch(
        f"{types_url}/{h100['id']}", json={"price_per_hour": -1}, headers=admin.headers
    )
    assert negative.status_code == 422
    assert (
        await client.delete(f"{types_url}/{made.json()['id']}", headers=admin.headers)
    ).status_code == 204
    used = await client.delete(
        f"{BASE}/{admin.provider.id}/instance-types/{admin.instance_type.id}", headers=admin.headers
    )
    assert used.status_code == 409


async def test_bare_metal_host_keys_never_in_clear(
    client: httpx.AsyncClient, admin: Tenant, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    body = {"name": "gpu-box-1", "address": "10.0.0.7", "user": "ubuntu", "private_key": pem,
            "host_key": host_key, "gpu_inventory": [{"model": "H100", "memory_gb": 80}]}  # fmt: skip
    url = f"{BASE}/bare-metal-hosts"

    # Without an encryption key configured, a key cannot be stored at all.
    monkeypatch.delenv("INVENTIV_SSH_KEY_ENCRYPTION_KEY", raising=False)
    refused = await client.post(url, json=body, headers=admin.headers)
    assert refused.status_code == 400 and "INVENTIV_SSH_KEY_ENCRYPTION_KEY" in refused.text
    assert "PRIVATE KEY" not in refused.text

    monkeypatch.setenv("INVENTIV_SSH_KEY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    created = await client.post(url, json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    host = created.json()
    assert host["key_source"] == "encrypted" and host["key_path"] is None
    assert "PRIVATE KEY" not in created.text and "private_key" not in host
    listed = await client.get(url, headers=admin.headers)
    assert "PRIVATE KEY" not in listed.text and listed.json()[0]["host_key"] == host_key
    async with sessionmaker() as session:
        row = await session.get(BareMetalHost, uuid.UUID(host["id"]))
        assert (
            row.private_key_ref.startswith("fernet:") and "PRIVATE KEY" not in row.private_key_ref
        )

    not_a_key = await client.post(
        url, json={**body, "name": "b2", "private_key": "hunter2"}, headers=admin.headers
    )
    assert not_a_key.status_code == 400 and "hunter2" not in not_a_key.text
    both = await client.post(
        url, json={**body, "name": "b3", "private_key_path": "/k"}, headers=admin.headers
    )
    assert both.status_code == 400
    by_path = await client.post(
        url,
        json={**{k: v for k, v in body.items() if k != "private_key"}, "name": "b4",
              "private_key_path": "/etc/inventiv/keys/b4"},
        headers=admin.headers,
    )  # fmt: skip
    assert by_path.status_code == 201 and by_path.json()["key_path"] == "/etc/inventiv/keys/b4"

    async with sessionmaker() as session:
        row = await session.get(BareMetalHost, uuid.UUID(host["id"]))
        row.claimed_by = uuid.uuid4()
        session.add(row)
        await session.commit()
    busy = await client.delete(f"{url}/{host['id']}", headers=admin.headers)
    assert busy.status_code == 409 and "terminate it first" in busy.text
    patched = await client.patch(
        f"{url}/{host['id']}", json={"enabled": False}, headers=admin.headers
    )
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    freed = await client.delete(f"{url}/{by_path.json()['id']}", headers=admin.headers)
    assert freed.status_code == 204


async def test_kinds_say_which_providers_can_run_and_why_not(
    client: httpx.AsyncClient, admin: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INVENTIV_AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("INVENTIV_SCALEWAY_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("INVENTIV_SCALEWAY_SECRET_KEY", str(uuid.uuid4()))
    monkeypatch.setenv("INVENTIV_SCALEWAY_PROJECT_ID", str(uuid.uuid4()))
    listed = await client.get(f"{BASE}/kinds", headers=admin.headers)
    assert listed.status_code == 200
    kinds = {k["kind"]: k for k in listed.json()}
    assert list(kinds) == list(PROVIDERS)  # the registry's order
    assert kinds["local"] == {
        "kind": "local", "title": "Local", "enabled": True, "reason": None,
        "capabilities": ["volumes"],
    }  # fmt: skip
    assert kinds["scaleway"]["enabled"] is True
    assert kinds["scaleway"]["capabilities"] == ["volumes", "public_ips"]
    assert kinds["aws"]["enabled"] is False
    assert kinds["aws"]["reason"] == "INVENTIV_AWS_ACCESS_KEY_ID or _SECRET_ACCESS_KEY unset"
    assert kinds["ssh"]["capabilities"] == ["host_pool", "capacity"]
    assert kinds["tunnel"]["capabilities"] == ["capacity"]
    assert os.environ["INVENTIV_SCALEWAY_SECRET_KEY"] not in listed.text


def test_the_api_imports_no_cloud_sdk() -> None:
    """Importing the API loads none of the SDKs: they are the worker's, through the registry."""
    probe = f"import sys, api.app; print([m for m in {CLOUD_SDKS!r} if m in sys.modules])"
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# The API in a process where the SDKs cannot be imported (a sys.meta_path blocker): it starts,
# lists the kinds with the reason each is off, syncs a catalogue (read by a worker, which has
# the SDKs), and refuses only what needs one.
_API_WITHOUT_SDKS = """
import asyncio, json, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in SDKS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

SDKS, settings_json, token, pem = json.loads(sys.argv[1])
sys.meta_path.insert(0, NotInstalled())

import httpx
from api.app import create_app
from core.settings import Settings

async def main():
    app = create_app(Settings(**settings_json))
    headers = {"Authorization": f"Bearer {token}"}
    out = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            out["kinds"] = (await client.get("/api/v1/providers/kinds", headers=headers)).json()
            made = await client.post(
                "/api/v1/providers", json={"name": "aws-no-sdk", "kind": "aws"}, headers=headers
            )
            synced = await client.post(
                f"/api/v1/providers/{made.json()['id']}/instance-types/sync", headers=headers
            )
            out["synced"] = [synced.status_code, sorted(t["name"] for t in synced.json())]
            host = await client.post(
                "/api/v1/providers/bare-metal-hosts", headers=headers,
                json={"name": "no-sdk", "address": "10.0.0.9", "user": "u", "private_key": pem},
            )
            out["host"] = [host.status_code, host.json()["detail"]]
    out["loaded"] = [m for m in SDKS if m in sys.modules]
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_the_api_serves_without_the_sdks(
    admin: Tenant, settings: Settings, temporal_client: Client
) -> None:
    pem = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    own = {
        "data_dir": str(settings.data_dir),
        "database_url": settings.database_url,
        "redis_url": settings.redis_url,
        "temporal_address": settings.temporal_address,
        "task_queue": settings.task_queue,
        "secret_key": settings.secret_key,
    }
    env = {
        **os.environ,
        "INVENTIV_AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "INVENTIV_AWS_SECRET_ACCESS_KEY": "aws-secret-" + uuid.uuid4().hex,
        "INVENTIV_SSH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    token = admin.headers["Authorization"].removeprefix("Bearer ")
    async with running_worker(settings, temporal_client, {}):  # AWS off in it: its table
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _API_WITHOUT_SDKS, json.dumps([CLOUD_SDKS, own, token, pem]),
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout_b, stderr_b = await asyncio.wait_for(process.communicate(), timeout=120)
    stdout, stderr = stdout_b.decode(), stderr_b.decode()
    assert process.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    kinds = {k["kind"]: k for k in out["kinds"]}
    assert kinds["local"]["enabled"] is True
    assert kinds["aws"] == {
        "kind": "aws", "title": "AWS", "enabled": False,
        "reason": "its SDK (boto3) is not installed", "capabilities": ["volumes", "public_ips"],
    }  # fmt: skip
    assert kinds["scaleway"]["reason"] == "its SDK (scaleway) is not installed"
    assert kinds["ssh"]["reason"] == "its SDK (asyncssh) is not installed"
    assert out["synced"] == [200, sorted(o.name for o in PROVIDERS["aws"].offers())]
    assert out["host"] == [503, "the bare-metal provider is off: asyncssh is not installed"]
    assert out["loaded"] == []
    assert env["INVENTIV_AWS_SECRET_ACCESS_KEY"] not in stdout + stderr
