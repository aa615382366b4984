"""Engine flag policy: members set only allowed, typed flags; code-loading and network flags need
a deployment an admin marked trusted; volume specs are checked when the deployment is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.engine_flags import render
from tests.api.conftest import Tenant
from tests.api.test_deployments import body

ROOT = Path(__file__).resolve().parents[2]


async def deployments_of(client: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    listed = await client.get(
        "/api/v1/deployments", params={"project_id": str(tenant.project.id)}, headers=tenant.headers
    )
    return listed.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"trust-remote-code": True}, "trust-remote-code"),
        ({"tool-parser-plugin": "/tmp/p.py"}, "tool-parser-plugin"),
        ({"worker-extension-cls": "evil.Worker"}, "worker-extension-cls"),
        ({"port": 9999}, "port"),
        ({"host": "0.0.0.0"}, "host"),
        ({"chat-template": "/etc/passwd"}, "chat-template"),
        ({"logits-processor-plugins": "x"}, "logits-processor-plugins"),
    ],
)
async def test_code_loading_and_network_flags_need_a_trusted_deployment(
    client: httpx.AsyncClient, alice: Tenant, flags: dict[str, Any], named: str
) -> None:
    before = await deployments_of(client, alice)
    refused = await client.post(
        "/api/v1/deployments", json=body(alice, engine_args=flags), headers=alice.headers
    )
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert f"'{named}'" in detail and "trusted" in detail
    assert await deployments_of(client, alice) == before  # nothing saved


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max-model-len": "long"}, "'max-model-len' must be an integer"),
        ({"gpu-memory-utilization": 1.5}, "'gpu-memory-utilization' must be at most 1"),
        ({"dtype": "int3"}, "'dtype' must be one of auto"),
        ({"enforce-eager": "yes"}, "'enforce-eager' must be true or false"),
        ({"made-up-flag": 1}, "'made-up-flag' is not on the allowed list"),
        ({"served-model-name": "x"}, "'served-model-name' is set by the platform"),
    ],
)
async def test_allowed_flags_are_typed(
    client: httpx.AsyncClient, alice: Tenant, flags: dict[str, Any], message: str
) -> None:
    refused = await client.post(
        "/api/v1/deployments", json=body(alice, engine_args=flags), headers=alice.headers
    )
    assert refused.status_code == 400 and message in refused.json()["detail"], refused.text


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ("10 GB", "'volumes' must be a list"),
        ([{"size_gb": 0}], "volumes[0].size_gb must be between 1 and"),
        ([{"size_gb": 10**9}], "volumes[0].size_gb must be between 1 and"),
        ([{"size_gb": 10, "volume_type": "nfs"}], "volumes[0].volume_type 'nfs' is not one of"),
        ([{"size_gb": 10, "mount": "/"}], "volumes[0]: unknown field(s) mount"),
        ([{"size_gb": 10, "delete_on_terminate": "no"}], "delete_on_terminate must be true"),
        ([{"size_gb": 1}] * 9, "at most 8 volumes"),
    ],
)
async def test_volume_specs_are_checked_when_saved(
    client: httpx.AsyncClient, alice: Tenant, volumes: Any, message: str
) -> None:
    refused = await client.post(
        "/api/v1/deployments",
        json=body(alice, engine_args={"volumes": volumes}),
        headers=alice.headers,
    )
    assert refused.status_code == 400 and message in refused.json()["detail"], refused.text


async def test_only_admins_trust_a_deployment(
    client: httpx.AsyncClient, alice: Tenant, admin: Tenant
) -> None:
    remote_code = body(alice, engine_args={"trust-remote-code": True}, trusted=True)
    by_member = await client.post("/api/v1/deployments", json=remote_code, headers=alice.headers)
    assert by_member.status_code == 403 and "only an admin" in by_member.json()["detail"]

    by_admin = await client.post("/api/v1/deployments", json=remote_code, headers=admin.headers)
    assert by_admin.status_code == 201, by_admin.text
    deployment = by_admin.json()
    assert deployment["trusted"] is True
    assert deployment["engine_args"] == {"trust-remote-code": True}
    url = f"/api/v1/deployments/{deployment['id']}"

    # The member may still scale it, not change what it runs.
    assert (
        await client.patch(url, json={"max_instances": 2}, headers=alice.headers)
    ).status_code == 200
    for change in ({"engine_args": {"trust-remote-code": True, "seed": 1}}, {"model": "org/x"}):
        refused = await client.patch(url, json=change, headers=alice.headers)
        assert refused.status_code == 403 and "trusted deployment" in refused.json()["detail"]

    # Trust taken back: the flag is refused again.
    untrusted = await client.patch(url, json={"trusted": False}, headers=admin.headers)
    assert untrusted.status_code == 400 and "'trust-remote-code'" in untrusted.json()["detail"]


async def test_the_readme_lists_the_engine_flag_policy() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render() in readme, "regenerate: python -m core.engine_flags --write README.md"
