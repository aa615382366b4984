"""The API serves the built dashboard at / with a single-page-app fallback; /api stays JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from core.settings import Settings


@pytest.fixture
async def dashboard_client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>Inventiv</title>")
    (dist / "assets" / "app.js").write_text("console.log('inventiv')")
    (tmp_path / "secret.txt").write_text("outside the dist folder")
    app = create_app(settings, dashboard_dist=dist)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client


async def test_serves_the_spa_and_keeps_api_errors(dashboard_client: httpx.AsyncClient) -> None:
    index = await dashboard_client.get("/")
    assert index.status_code == 200 and "<title>Inventiv</title>" in index.text
    deep_link = await dashboard_client.get("/instances/1234")
    assert deep_link.status_code == 200 and "<title>Inventiv</title>" in deep_link.text
    asset = await dashboard_client.get("/assets/app.js")
    assert asset.text == "console.log('inventiv')"
    assert "javascript" in asset.headers["content-type"]
    unknown_api = await dashboard_client.get("/api/v1/nothing-here")
    assert unknown_api.status_code == 404 and unknown_api.json()["detail"]
    escape = await dashboard_client.get("/%2e%2e/secret.txt")
    assert "outside the dist folder" not in escape.text


async def test_without_a_build_says_how_to_build(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings, dashboard_dist=tmp_path / "missing")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        response = await client.get("/")
    assert response.status_code == 404 and "npm run build" in response.json()["detail"]
