"""Web hardening as a browser or a client meets it: cookie-authenticated state changes need a
custom header, forwarded headers count only from trusted proxies, CSV cells cannot be formulas,
and an oversized body is refused with 413 before anything parses it."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.settings import Settings
from tests.agent.helpers import serving
from tests.api.conftest import Tenant


async def test_cookie_state_changes_need_the_custom_header(
    client: httpx.AsyncClient, alice: Tenant
) -> None:
    login = {"email": alice.user.email, "password": alice.password}
    assert (await client.post("/api/v1/auth/login", json=login)).status_code == 200
    key = {"project_id": str(alice.project.id), "name": "from a form"}
    forged = await client.post("/api/v1/keys", json=key)  # what another site's form could send
    assert forged.status_code == 403 and "X-Requested-With" in forged.json()["detail"]
    assert (await client.get("/api/v1/auth/me")).status_code == 200  # reading needs nothing
    made = await client.post("/api/v1/keys", json=key, headers={"X-Requested-With": "test"})
    assert made.status_code == 201
    client.cookies.clear()
    bearer = await client.post("/api/v1/keys", json=key, headers=alice.headers)
    assert bearer.status_code == 201  # a bearer token cannot be sent by another site


async def cookie_flags(app: Any, tenant: Tenant, **headers: str) -> str:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        login = {"email": tenant.user.email, "password": tenant.password}
        response = await client.post("/api/v1/auth/login", json=login, headers=headers)
        assert response.status_code == 200
        return response.headers["set-cookie"].lower()


async def test_forwarded_https_counts_only_from_trusted_proxies(
    app: Any, settings: Settings, alice: Tenant
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"}
    assert "secure" not in await cookie_flags(app, alice, **forwarded)  # 127.0.0.1: not trusted
    trusting = settings.model_copy(update={"trusted_proxies": "127.0.0.1"})
    proxied = create_app(trusting)
    async with proxied.router.lifespan_context(proxied):
        assert "; secure" in await cookie_flags(proxied, alice, **forwarded)
    always = create_app(settings.model_copy(update={"cookie_secure": True}))
    async with always.router.lifespan_context(always):
        assert "; secure" in await cookie_flags(always, alice)


async def test_csv_cells_cannot_be_formulas(client: httpx.AsyncClient, alice: Tenant) -> None:
    for name in ('=HYPERLINK("http://evil")', "+1", "-2", "@SUM(A1)", "plain"):
        response = await client.post(
            "/api/v1/keys",
            json={"project_id": str(alice.project.id), "name": name},
            headers=alice.headers,
        )
        assert response.status_code == 201
    from tests.api.conftest import add_request_logs

    keys = (await client.get("/api/v1/keys", headers=alice.headers)).json()
    rows = [{"api_key_id": k["id"]} for k in keys]
    await add_request_logs(client._transport.app.state.sessionmaker, alice, *rows)  # type: ignore[attr-defined]
    exported = await client.get(
        "/api/v1/usage/export", params={"group_by": "key"}, headers=alice.headers
    )
    names = {line["api_key_name"] for line in csv.DictReader(io.StringIO(exported.text))}
    assert {'\'=HYPERLINK("http://evil")', "'+1", "'-2", "'@SUM(A1)", "plain"} <= names


@pytest.fixture
async def api_base(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings)) as url:
        yield url


async def raw_post(base: str, head: str, body: bytes) -> str:
    """Send a request's head and the start of its body; the status line the server answers."""
    url = httpx.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).decode()
    finally:
        writer.close()


async def test_an_oversized_body_is_refused_before_parsing(
    api_base: str, settings: Settings
) -> None:
    # 50 MB announced, unauthenticated: the answer comes before the body is even sent.
    head = (
        "POST /api/v1/agents/heartbeat HTTP/1.1\r\nHost: api\r\n"
        "Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
    )
    assert " 413 " in await raw_post(api_base, head, b"{")
    # No Content-Length: the chunks are counted as they come, refused past the cap.
    head = (
        "POST /api/v1/agents/heartbeat HTTP/1.1\r\nHost: api\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * (256 * 1024)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))  # 2 MB
    assert " 413 " in await raw_post(api_base, head, chunks)
    async with httpx.AsyncClient(base_url=api_base, timeout=30) as client:
        small = await client.post("/api/v1/agents/heartbeat", json={})
        assert small.status_code in (401, 422)  # an ordinary refusal, parsed as usual
        response = await client.post("/api/v1/agents/heartbeat", content=b"x" * (2 << 20))
        assert response.status_code == 413
        assert str(settings.max_request_body_bytes) in response.json()["detail"]
