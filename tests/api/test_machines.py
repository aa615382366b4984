"""Machine enrolment as its users meet it: a token shown once that works once and expires, the
owner's sharing rules checked, only owners and admins changing a machine, the join command
pinning the control plane's TLS keys."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import select

from core.models import Machine, MachineEnrolment, utcnow
from core.settings import Settings
from tests.api.conftest import Tenant
from tests.tunnel.certs import self_signed

KEY = "ab" * 32  # an Ed25519 public key's length; the join does not check the curve point


async def _enrol(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body = {"name": "lab-box", "project_id": str(tenant.project.id), **body}
    response = await client.post("/api/v1/machines/enrolments", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_token_works_once(client: httpx.AsyncClient, alice: Tenant) -> None:
    enrolment = await _enrol(client, alice)
    assert enrolment["command"].startswith("python -m agent join --control-plane ")
    joined = await client.post(
        "/api/v1/machines/join", json={"token": enrolment["token"], "public_key": KEY}
    )
    assert joined.status_code == 201, joined.text
    assert joined.json()["credential"].startswith("imc_")
    again = await client.post(
        "/api/v1/machines/join", json={"token": enrolment["token"], "public_key": KEY}
    )
    assert again.status_code == 409 and "already used" in again.json()["detail"]
    listed = (await client.get("/api/v1/machines", headers=alice.headers)).json()
    assert [m["name"] for m in listed] == ["lab-box"]
    assert listed[0]["owner_email"] == alice.user.email and listed[0]["connected"] is False


async def test_expired_and_unknown_tokens_are_refused(
    client: httpx.AsyncClient, alice: Tenant, sessionmaker: Any
) -> None:
    enrolment = await _enrol(client, alice, expires_in_s=60)
    async with sessionmaker() as session:
        await session.execute(
            update(MachineEnrolment).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    expired = await client.post(
        "/api/v1/machines/join", json={"token": enrolment["token"], "public_key": KEY}
    )
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    unknown = await client.post(
        "/api/v1/machines/join", json={"token": "ime_nonsense", "public_key": KEY}
    )
    assert unknown.status_code == 401
    bad_key = await client.post("/api/v1/machines/join", json={"token": "x", "public_key": "zz"})
    assert bad_key.status_code == 422


async def test_who_may_enrol_and_change_a_machine(
    client: httpx.AsyncClient, alice: Tenant, bob: Tenant, sessionmaker: Any
) -> None:
    shared = await client.post(
        "/api/v1/machines/enrolments", json={"name": "x"}, headers=alice.headers
    )
    assert shared.status_code == 403  # only admins enrol machines shared by every project
    foreign = await client.post(
        "/api/v1/machines/enrolments",
        json={"name": "x", "project_id": str(bob.project.id)},
        headers=alice.headers,
    )
    assert foreign.status_code == 404
    enrolment = await _enrol(client, alice)
    machine_id = (
        await client.post(
            "/api/v1/machines/join", json={"token": enrolment["token"], "public_key": KEY}
        )
    ).json()["machine_id"]
    rules = {
        "timezone": "Europe/Paris",
        "slots": [{"days": ["mon", "tue"], "start": "20:00", "end": "08:00"}],
        "quota_gpus": 1,
        "quota_gpu_hours_per_day": 6,
    }
    assert (
        await client.put(f"/api/v1/machines/{machine_id}/sharing", json=rules, headers=bob.headers)
    ).status_code == 404
    saved = await client.put(
        f"/api/v1/machines/{machine_id}/sharing", json=rules, headers=alice.headers
    )
    assert saved.status_code == 200 and saved.json()["sharing"]["quota_gpus"] == 1
    wrong = await client.put(
        f"/api/v1/machines/{machine_id}/sharing",
        json={**rules, "timezone": "Mars/Olympus"},
        headers=alice.headers,
    )
    assert wrong.status_code == 422 and "time zone" in wrong.json()["detail"][0]["msg"]
    revoked = await client.post(f"/api/v1/machines/{machine_id}/revoke", headers=alice.headers)
    assert revoked.status_code == 200
    async with sessionmaker() as session:
        row = await session.get(Machine, revoked.json()["id"])
        assert row is not None and row.revoked_at is not None


async def test_the_join_command_pins_the_control_plane_s_tls_keys(
    client: httpx.AsyncClient,
    alice: Tenant,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sessionmaker: Any,
) -> None:
    # no TLS configured: no pin
    plain = await _enrol(client, alice)
    assert plain["pins"] == [] and "--pin" not in plain["command"]
    # the tunnel endpoint's certificate: its key is pinned
    endpoint, _, endpoint_pin = self_signed(tmp_path, "endpoint")
    monkeypatch.setenv("INVENTIV_TUNNEL_TLS_CERT", str(endpoint))
    pinned = await _enrol(client, alice)
    assert pinned["pins"] == [endpoint_pin]
    assert pinned["command"].endswith(f" --token {pinned['token']} --pin {endpoint_pin}")
    # named certificates (the API's proxy and the endpoint's), each key once
    proxy, _, proxy_pin = self_signed(tmp_path, "proxy")
    settings.machine_pin_certs = f"{proxy}, {endpoint},{proxy}"
    both = await _enrol(client, alice)
    assert both["pins"] == [proxy_pin, endpoint_pin]
    assert both["command"].endswith(f" --pin {proxy_pin} --pin {endpoint_pin}")
    # a certificate that cannot be read fails the enrolment rather than dropping the pin
    settings.machine_pin_certs = str(tmp_path / "missing.crt")
    async with sessionmaker() as session:
        before = len((await session.exec(select(MachineEnrolment))).all())
    failed = await client.post(
        "/api/v1/machines/enrolments",
        json={"name": "lab-box", "project_id": str(alice.project.id)},
        headers=alice.headers,
    )
    assert failed.status_code == 500 and "missing.crt" in failed.json()["detail"]
    async with sessionmaker() as session:
        assert len((await session.exec(select(MachineEnrolment))).all()) == before
