"""Browser tests: the real API app (uvicorn, serving the built dashboard) on the test stack,
driven by Playwright through Debian's chromium. No browser download: without /usr/bin/chromium
(or a built dashboard and no npm to build it) the tests are skipped with the reason."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboard"
DIST = DASHBOARD / "dist"
SCREENSHOTS = DASHBOARD / "test-results"
CHROMIUM = os.environ.get("INVENTIV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _dist_is_stale() -> bool:
    index = DIST / "index.html"
    if not index.is_file():
        return True
    built = index.stat().st_mtime
    sources = [
        DASHBOARD / "index.html",
        DASHBOARD / "package.json",
        *(DASHBOARD / "src").rglob("*"),
    ]
    return any(p.is_file() and p.stat().st_mtime > built for p in sources)


@pytest.fixture(scope="session")
def dashboard_dist() -> Path:
    """dashboard/dist, built here when missing or older than its sources (`make test` builds it
    first, so this is only a fallback for running the browser tests alone)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    if _dist_is_stale():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("dashboard/dist is missing or stale and npm is not installed to build it")
        if not (DASHBOARD / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DASHBOARD, check=True)
        subprocess.run([npm, "run", "build"], cwd=DASHBOARD, check=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    return DIST


@dataclass
class ApiServer:
    url: str
    settings: Settings


@pytest.fixture
async def api_server(settings: Settings, dashboard_dist: Path) -> AsyncIterator[ApiServer]:
    """The real API app (create_app) under uvicorn on settings.api_port, in its own thread."""
    from api.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.api_port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient() as http:
        index = await http.get(url + "/")
    assert index.status_code == 200 and '<div id="root">' in index.text, (
        "the API does not serve the dashboard at /"
    )
    try:
        yield ApiServer(url, settings)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)


@pytest.fixture
async def browser(dashboard_dist: Path):  # type: ignore[no-untyped-def]
    """Debian's chromium (dashboard_dist skips the test when it is missing)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser, api_server: ApiServer):  # type: ignore[no-untyped-def]
    context = await browser.new_context(
        base_url=api_server.url, viewport={"width": 1366, "height": 860}, accept_downloads=True
    )
    context.set_default_timeout(15_000)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    await context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
