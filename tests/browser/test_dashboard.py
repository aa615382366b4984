"""The dashboard as an operator uses it, in a real browser against the real API, database,
Redis, Temporal server and worker: sign in, provision an instance and watch it go live without
reloading, read its detail, terminate it; create and revoke an API key; read usage."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect
from sqlmodel import select

from core.machine_sharing import local_day
from core.models import (
    ActionStatus,
    ApiKey,
    Instance,
    InstanceAction,
    InstanceState,
    Machine,
    MachineUsage,
    RequestLog,
    Role,
    utcnow,
)
from tests.browser.conftest import SCREENSHOTS, ApiServer
from tests.factories import Seeded, seed
from tests.workflows.helpers import local_providers, running_worker, wait_state
from workflows.client import create_instance, terminate_instance

SIM_FAST = {"model-load-delay-s": 0.2}


async def login(page: Page, seeded: Seeded) -> None:
    await page.goto("/")
    await page.get_by_label("E-mail").fill(seeded.user.email)
    await page.get_by_label("Password").fill(seeded.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


async def nav(page: Page, name: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def accept_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_login_refuses_a_wrong_password_then_signs_in(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session)
    await page.goto("/")
    await page.get_by_label("E-mail").fill(seeded.user.email)
    await page.get_by_label("Password").fill("not-the-password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong e-mail or password.")
    await shot(page, "login")

    await page.get_by_label("Password").fill(seeded.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_contain_text(seeded.user.email)

    # The session is an httpOnly cookie: a reload stays signed in, signing out ends it.
    assert await page.evaluate("document.cookie") == "", "the session cookie must be httpOnly"
    await page.reload()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    # A session that ends while the page is open sends the user back to the login, saying why.
    cookies = await page.context.cookies()
    await page.context.clear_cookies()
    # The page's own background requests may notice first, so go by the address, not a click.
    await page.evaluate("location.hash = '#/instances'")
    await expect(page.get_by_role("status").filter(has_text="session has expired")).to_be_visible()
    await page.context.add_cookies(cookies)
    await page.reload()
    await expect(page.get_by_role("heading", name="Instances")).to_be_visible()

    # A server that fails or lacks an endpoint is explained in words, with a way to retry.
    await page.route("**/api/v1/overview", lambda r: r.fulfill(status=500, body="oops"))
    await page.route(
        "**/api/v1/metrics/requests*",
        lambda r: r.fulfill(status=404, json={"detail": "Not Found"}),
    )
    await nav(page, "Overview")
    await expect(page.get_by_role("alert")).to_contain_text(
        "The server failed (HTTP 500). Try again in a moment."
    )
    await expect(page.get_by_role("note")).to_contain_text("Request metrics is not available yet")
    await page.unroute("**/api/v1/overview")
    await page.get_by_role("button", name="Try again").click()
    await expect(page.get_by_role("heading", name="Instances by state")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()


async def test_new_instance_goes_live_without_reloading(
    page: Page, api_server: ApiServer, sessionmaker, temporal_client
) -> None:
    settings = api_server.settings
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    deployment = seeded.deployment
    accept_dialogs(page)
    async with running_worker(settings, temporal_client):
        await login(page, seeded)
        await nav(page, "Instances")
        await expect(page.get_by_text("No instances yet")).to_be_visible()
        # Anything that reloads the page drops this marker.
        await page.evaluate("window.__stillTheSamePage = true")

        await nav(page, "Deployments")
        card = page.locator(f'[data-deployment-id="{deployment.id}"]')
        await expect(card.get_by_role("heading", name=deployment.name)).to_be_visible()
        await expect(card).to_contain_text("test-model")
        await shot(page, "deployments")
        await card.get_by_role("button", name=f"Provision instance of {deployment.name}").click()
        await expect(
            page.get_by_role("status").filter(has_text="Provisioning instance")
        ).to_be_visible()

        await nav(page, "Instances")
        rows = page.get_by_role("table", name="Instances").locator("tbody tr")
        await expect(rows).to_have_count(1)
        await expect(page.get_by_role("status", name="Updates: Live")).to_be_visible()
        instance_id = uuid.UUID(await rows.first.get_attribute("data-instance-id") or "")
        row = page.locator(f'tr[data-instance-id="{instance_id}"]')
        await expect(row).to_contain_text(deployment.name)
        # It climbs through the lifecycle and reaches ready, updated in place.
        await expect(row).to_have_attribute("data-state", "ready", timeout=60_000)
        await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
        await expect(row.locator("[data-state=ready]")).to_have_text("Ready")
        assert await page.evaluate("window.__stillTheSamePage === true"), "the page was reloaded"
        await shot(page, "instances")
        await page.get_by_label("Filter by state").select_option("terminated")
        await expect(page.get_by_text("No instances match these filters")).to_be_visible()
        await page.get_by_label("Filter by state").select_option("ready")
        await page.get_by_label("Filter by provider").select_option(seeded.provider.name)
        await expect(row).to_have_attribute("data-state", "ready")

        # Detail: timeline, action log with durations, link to the Temporal UI.
        await row.get_by_role("link").first.click()
        await expect(
            page.get_by_role("heading", name=f"Instance {str(instance_id)[:8]}")
        ).to_be_visible()
        timeline = page.locator("ol.timeline")
        await expect(timeline).to_contain_text("Booting")
        await expect(timeline).to_contain_text("Ready")
        log = page.get_by_role("table", name="Action log")
        model_loaded = log.locator("tr", has_text="Model loaded")
        await expect(model_loaded).to_contain_text("Succeeded")
        await expect(model_loaded).to_contain_text(re.compile(r"\d+(\.\d+)? (ms|s)"))
        temporal = page.get_by_role("link", name="Open workflow in Temporal UI")
        assert f"/workflows/instance-{instance_id}" in (await temporal.get_attribute("href") or "")
        await shot(page, "instance-detail")

        # Some traffic of the last half hour, as the gateway logs it, for the live charts.
        logged_today = await add_traffic(sessionmaker, seeded, instance_id)
        await nav(page, "Overview")
        states = page.locator("section", has=page.get_by_role("heading", name="Instances by state"))
        await expect(states.get_by_role("link", name="1 ready")).to_be_visible()
        await expect(page.get_by_role("group", name="Current spend rate")).to_contain_text(
            "€1.00/h"
        )
        # The half hour may straddle midnight UTC; "today" counts only what fell after it.
        await expect(
            page.get_by_role("group", name="Requests today").locator(".stat-value")
        ).to_have_text(str(logged_today))
        await expect(
            page.get_by_role("img", name=re.compile(r"^Request rate\. Latest requests: \d"))
        ).to_be_visible()
        await expect(
            page.get_by_role("img", name=re.compile(r"^Latency\. Latest TTFT p95: \d+ ms"))
        ).to_be_visible()
        await shot(page, "overview")

        # Terminate from the detail page and watch it end, still without a reload.
        await page.goto(f"/#/instances/{instance_id}")
        await page.evaluate("window.__stillTheSamePage = true")
        await page.get_by_role("button", name="Terminate").click()
        await expect(
            page.get_by_role("status").filter(has_text="Terminate requested")
        ).to_be_visible()
        status = page.locator("dl.kv").first
        await expect(status.locator("[data-state]")).to_have_text("Terminated", timeout=60_000)
        assert await page.evaluate("window.__stillTheSamePage === true"), "the page was reloaded"
        done = await wait_state(sessionmaker, instance_id, InstanceState.terminated, timeout=30)
        assert done.termination_reason == "user_request"


async def add_traffic(sessionmaker, seeded: Seeded, instance_id: uuid.UUID, count: int = 60) -> int:
    """Logs `count` requests over the last half hour; returns how many fell on today (UTC)."""
    now = utcnow()
    times = [now - timedelta(seconds=int(1700 * (n / count) ** 1.5) + 5) for n in range(count)]
    async with sessionmaker() as session:
        for n, at in enumerate(times):
            session.add(
                RequestLog(
                    at=at,
                    api_key_id=seeded.api_key_row.id,
                    project_id=seeded.project.id,
                    deployment_id=seeded.deployment.id,
                    instance_id=instance_id,
                    model="test-model",
                    input_tokens=40 + n % 7,
                    output_tokens=120 + (n * 37) % 90,
                    ttft_ms=80 + (n * 13) % 60,
                    latency_ms=900 + (n * 53) % 400,
                    status_code=500 if n % 29 == 0 else 200,
                )
            )
        await session.commit()
    return sum(at.date() == now.date() for at in times)


async def test_instances_fall_back_to_polling_without_the_event_stream(
    page: Page, api_server: ApiServer, sessionmaker, temporal_client
) -> None:
    """A proxy that drops SSE must not freeze the page: it polls and still shows the truth."""
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    await page.route("**/api/v1/events", lambda route: route.fulfill(status=404, body="{}"))
    accept_dialogs(page)
    async with running_worker(api_server.settings, temporal_client):
        await login(page, seeded)
        await nav(page, "Deployments")
        await page.get_by_role(
            "button", name=f"Provision instance of {seeded.deployment.name}"
        ).click()
        await nav(page, "Instances")
        await expect(
            page.get_by_role("status", name="Updates: Refreshing every few seconds")
        ).to_be_visible()
        row = page.get_by_role("table", name="Instances").locator("tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_have_attribute("data-state", "ready", timeout=60_000)
        instance_id = uuid.UUID(await row.get_attribute("data-instance-id") or "")
        await row.get_by_role("button", name=f"Drain {str(instance_id)[:8]}").click()
        await expect(row).to_have_attribute("data-state", "terminated", timeout=60_000)
    async with sessionmaker() as session:
        assert (await session.get(Instance, instance_id)).state == InstanceState.terminated


async def test_a_failed_start_is_explained_in_words(
    page: Page, api_server: ApiServer, sessionmaker, temporal_client
) -> None:
    settings = api_server.settings
    async with sessionmaker() as session:
        seeded = await seed(session)
    await login(page, seeded)
    providers = local_providers(settings, fail_create="capacity")
    async with running_worker(settings, temporal_client, providers):
        async with sessionmaker() as session:
            instance = await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
        await page.goto(f"/#/instances/{instance.id}")
        status = page.locator("dl.kv").first
        await expect(status.locator("[data-state]")).to_have_text("Terminated", timeout=60_000)
    await expect(page.get_by_role("alert")).to_contain_text("no capacity")
    await expect(status).to_contain_text("Startup error")
    create = page.get_by_role("table", name="Action log").locator("tr", has_text="Provider create")
    await expect(create).to_contain_text("Failed")
    await expect(create.locator(".cell-error")).to_contain_text("no capacity")
    timeline = page.locator("ol.timeline")
    await expect(timeline).to_contain_text("Startup failed")
    await expect(page.get_by_role("button", name="Terminate")).to_have_count(0)
    await shot(page, "instance-failed")


async def test_a_cleanup_that_keeps_failing_says_what_is_left_and_what_to_do(
    page: Page, api_server: ApiServer, sessionmaker, temporal_client
) -> None:
    """Every machine and volume delete fails 8 times: while they do, the instance's page names
    the failing step, the resource ids left at the provider and what to do, and the list marks
    it; once the deletes go through, both go away by themselves."""
    settings = api_server.settings.model_copy(
        update={"cleanup_attention_after_attempts": 2, "cleanup_max_interval_s": 2}
    )
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    await login(page, seeded)
    providers = local_providers(settings, delete_failures=8)
    async with running_worker(settings, temporal_client, providers):
        async with sessionmaker() as session:
            instance = await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
        ready = await wait_state(sessionmaker, instance.id, InstanceState.ready)
        await terminate_instance(temporal_client, instance.workflow_id)
        await page.goto(f"/#/instances/{instance.id}")
        panel = page.get_by_role("alert").filter(has_text="Needs attention")
        await expect(panel).to_be_visible(timeout=30_000)
        await expect(panel).to_contain_text("goes on retrying")
        await expect(panel.get_by_role("list", name="Leaked resource ids")).to_contain_text(
            str(ready.provider_resource_id)
        )
        await expect(panel).to_contain_text("retries every")
        await shot(page, "instance-needs-attention")
        await nav(page, "Instances")
        row = page.locator(f'tr[data-instance-id="{instance.id}"]')
        await expect(row.locator("[data-attention]")).to_have_text("needs attention")
        await expect(row.locator("[data-attention]")).to_have_count(0, timeout=60_000)
        await expect(row.locator("[data-state]")).to_have_text("Terminated", timeout=30_000)
        await page.goto(f"/#/instances/{instance.id}")
        await expect(page.locator("dl.kv").first.locator("[data-state]")).to_have_text("Terminated")
        await expect(page.get_by_text("Needs attention")).to_have_count(0)


async def test_create_and_revoke_a_key_then_read_usage(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session)
        now = utcnow()
        for n, (tokens_in, tokens_out, status) in enumerate(
            [(100, 400, 200), (23, 56, 200), (7, 0, 500)]
        ):
            session.add(
                RequestLog(
                    at=now - timedelta(minutes=n + 1),
                    api_key_id=seeded.api_key_row.id,
                    project_id=seeded.project.id,
                    deployment_id=seeded.deployment.id,
                    model="test-model",
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    latency_ms=120,
                    status_code=status,
                )
            )
        await session.commit()
    accept_dialogs(page)
    await login(page, seeded)

    await nav(page, "API keys")
    keys = page.get_by_role("table", name="API keys")
    await expect(keys.locator("tr", has_text=seeded.api_key_row.prefix)).to_be_visible()
    await page.get_by_label("Name").fill("ci-key")
    await page.get_by_label("Requests per minute (optional)").fill("120")
    await page.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_label("New API key secret")
    await expect(secret_box).to_be_visible()
    secret = await secret_box.input_value()
    await expect(page.get_by_text("it will not be shown again")).to_be_visible()
    row = keys.locator("tr", has_text="ci-key")
    await expect(row).to_contain_text("120 req/min")
    prefix = (await row.locator("td.mono").inner_text()).rstrip("…")
    assert secret.startswith(prefix) and len(secret) > len(prefix) + 16
    await shot(page, "keys")

    # Shown once: gone after dismissing it and after a reload.
    await page.get_by_role("button", name="I have saved it").click()
    await expect(secret_box).to_have_count(0)
    await page.reload()
    await expect(keys.locator("tr", has_text="ci-key")).to_be_visible()
    assert secret not in await page.content()

    await page.get_by_role("button", name="Revoke key ci-key").click()
    await expect(
        page.get_by_role("status").filter(has_text='Key "ci-key" revoked.')
    ).to_be_visible()
    await expect(keys.locator("tr", has_text="ci-key")).to_have_count(0)
    await page.get_by_label("Show revoked keys").check()
    await expect(keys.locator("tr", has_text="ci-key")).to_contain_text("Revoked")
    async with sessionmaker() as session:
        key = (await session.exec(select(ApiKey).where(ApiKey.name == "ci-key"))).one()
        assert key.revoked_at is not None and secret not in key.key_hash

    # Usage: the request logs of today, by day and by model, exported as CSV.
    await nav(page, "Usage & costs")
    await expect(page.get_by_role("heading", name="Usage and costs")).to_be_visible()
    totals = page.get_by_role("region", name="Period totals")
    await expect(totals.get_by_role("group", name="Requests").locator(".stat-value")).to_have_text(
        "3"
    )
    await expect(totals.get_by_role("group", name="Requests")).to_contain_text("1 failed")
    await expect(totals.get_by_role("group", name="Input tokens")).to_contain_text("130")
    await expect(totals.get_by_role("group", name="Output tokens")).to_contain_text("456")
    # A request logged now shows up within seconds, without a reload.
    async with sessionmaker() as session:
        session.add(
            RequestLog(
                at=utcnow(),
                api_key_id=seeded.api_key_row.id,
                project_id=seeded.project.id,
                model="test-model",
                input_tokens=1,
                output_tokens=1,
                latency_ms=50,
            )
        )
        await session.commit()
    requests = totals.get_by_role("group", name="Requests").locator(".stat-value")
    await expect(requests).to_have_text("4", timeout=15_000)
    await expect(totals.get_by_role("group", name="Input tokens")).to_contain_text("131")
    await page.get_by_label("Group usage by").select_option("model")
    table = page.get_by_role("table", name="Usage by model")
    await expect(table.locator("tbody tr", has_text="test-model")).to_contain_text("131")
    await shot(page, "usage")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Export CSV").first.click()
    download = await download_info.value
    csv = (await download.path()).read_text() if await download.path() else ""
    assert csv.splitlines()[0].startswith("model,") and "test-model" in csv and ",131," in csv

    # Overview shows today's totals too.
    await nav(page, "Overview")
    await expect(page.get_by_role("group", name="Requests today")).to_contain_text("4")
    await expect(page.get_by_role("group", name="Error rate today")).to_contain_text("25.0 %")

    # Every page fits a small laptop and a wide screen without sideways scrolling.
    for width, height in ((1024, 700), (1920, 1080)):
        await page.set_viewport_size({"width": width, "height": height})
        for name in (
            "Overview",
            "Instances",
            "Deployments",
            "API keys",
            "Usage & costs",
            "Providers & prices",
            "Users & projects",
        ):
            await nav(page, name)
            await expect(page.locator("main h1")).to_be_visible()
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{name} at {width}px is {overflow}px too wide"


async def test_instance_list_is_empty_and_says_so_for_a_new_member(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    """A member of another project sees none of the first project's instances or keys."""
    async with sessionmaker() as session:
        other = await seed(session)
        session.add(
            Instance(
                deployment_id=other.deployment.id,
                project_id=other.project.id,
                provider_id=other.provider.id,
                instance_type_id=other.instance_type.id,
                workflow_id="instance-x",
            )
        )
        await session.commit()
        member = await seed(session, role=Role.member)
    await login(page, member)
    await nav(page, "Instances")
    await expect(page.get_by_text("No instances yet")).to_be_visible()
    await nav(page, "API keys")
    keys = page.get_by_role("table", name="API keys")
    await expect(keys.locator("tbody tr")).to_have_count(1)
    await expect(keys).not_to_contain_text(other.api_key_row.prefix)
    await expect(page.get_by_role("link", name="Providers & prices")).to_have_count(0)
    # Members configure deployments from the catalogue without the admin pages.
    await nav(page, "Deployments")
    await page.get_by_role("button", name="New deployment").click()
    await expect(page.get_by_label("Provider")).to_contain_text(member.provider.name)
    await page.get_by_label("Provider").select_option(label=f"{member.provider.name} (local)")
    await expect(page.get_by_label("Instance type")).to_contain_text(
        f"{member.instance_type.name} — 1\N{MULTIPLICATION SIGN} sim, €1.00/h"
    )


async def test_admin_sets_a_price_and_configures_a_deployment(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    from core.models import Deployment, InstanceType

    async with sessionmaker() as session:
        seeded = await seed(session)
    accept_dialogs(page)
    await login(page, seeded)

    await nav(page, "Providers & prices")
    providers = page.get_by_role("table", name="Providers")
    await expect(providers.locator("tr", has_text=seeded.provider.name)).to_contain_text("local")
    price = page.get_by_label(f"Price per hour of {seeded.instance_type.name}")
    await expect(price).to_have_value("1")
    await price.fill("2.5")
    await page.get_by_role("button", name=f"Save price of {seeded.instance_type.name}").click()
    await expect(page.get_by_role("status").filter(has_text="set to €2.50/h")).to_be_visible()
    types = page.get_by_role("table", name="Instance types")
    row = types.locator("tr", has_text=seeded.instance_type.name)
    await expect(row.get_by_text("Manual", exact=True)).to_be_visible()  # its price source
    await shot(page, "providers")
    async with sessionmaker() as session:
        assert (await session.get(InstanceType, seeded.instance_type.id)).price_per_hour == 2.5

    await nav(page, "Deployments")
    await page.get_by_role("button", name="New deployment").click()
    form = page.locator("form", has=page.get_by_role("heading", name="New deployment"))
    await form.get_by_label("Name", exact=True).fill("chat")
    await form.get_by_label("Model", exact=True).fill("org/chat-model")
    await expect(form.get_by_label("Instance type")).to_contain_text("€2.50/h")
    await form.get_by_label("Minimum instances").fill("5")
    await form.get_by_label("Maximum instances").fill("2")
    await form.get_by_role("button", name="Create deployment").click()
    await expect(form.get_by_role("alert")).to_have_text(
        "Minimum instances cannot be more than maximum instances."
    )
    await form.get_by_label("Minimum instances").fill("0")
    await form.get_by_label("Maximum instances").fill("3")
    await form.get_by_label("Engine arguments (JSON, flags without dashes)").fill('{"--bad": 1}')
    await form.get_by_role("button", name="Create deployment").click()
    await expect(form.get_by_role("alert")).to_contain_text("'--bad' is not a flag name")
    await form.get_by_label("Engine arguments (JSON, flags without dashes)").fill(
        '{"max-model-len": 4096}'
    )
    await form.get_by_label("Scale up when active requests per GPU exceed").fill("4")
    await form.get_by_role("button", name="Create deployment").click()
    await expect(
        page.get_by_role("status").filter(has_text="Deployment chat created.")
    ).to_be_visible()
    card = page.locator("article", has=page.get_by_role("heading", name="chat", exact=True))
    await expect(card).to_contain_text("org/chat-model")
    await expect(card).to_contain_text("min 0 · max 3")
    await expect(card).to_contain_text(f"{seeded.instance_type.name} (€2.50/h)")

    await card.get_by_role("button", name="Edit chat").click()
    edit = page.locator("form", has=page.get_by_role("heading", name="Edit chat"))
    await expect(edit.get_by_label("Scale up when active requests per GPU exceed")).to_have_value(
        "4"
    )
    await edit.get_by_label("Maximum instances").fill("6")
    await edit.get_by_role("button", name="Save").click()
    await expect(card).to_contain_text("min 0 · max 6")

    await card.get_by_role("button", name="Start autoscaling").click()
    await expect(card.get_by_text("Autoscaling on")).to_be_visible()
    events = card.get_by_role("list", name="Events of chat")
    await expect(events).to_contain_text("autoscaling started")
    # Kept by the API: still there after a reload.
    await page.reload()
    await expect(events.locator("li").first).to_contain_text("Deployment: autoscaling started")
    await shot(page, "deployments-configured")
    async with sessionmaker() as session:
        chat = (await session.exec(select(Deployment).where(Deployment.name == "chat"))).one()
        assert (chat.max_instances, chat.autoscaling_enabled) == (6, True)
        assert chat.engine_args == {"max-model-len": 4096}
        assert chat.autoscaling.get("scale_up_active_per_gpu") == 4

    await card.get_by_role("button", name="Delete chat").click()
    await expect(card).to_have_count(0)


AXE = Path(__file__).resolve().parents[2] / "dashboard" / "node_modules" / "axe-core" / "axe.min.js"


async def test_pages_have_no_serious_accessibility_violations(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    """axe-core (the engine of the browsers' accessibility audits) on every page: labels,
    names, roles, contrast."""
    if not AXE.is_file():
        pytest.skip("axe-core is not installed: run npm ci in dashboard/")
    async with sessionmaker() as session:
        seeded = await seed(session)
        instance = Instance(
            deployment_id=seeded.deployment.id,
            project_id=seeded.project.id,
            provider_id=seeded.provider.id,
            instance_type_id=seeded.instance_type.id,
            workflow_id="instance-a11y",
            error="no capacity in zone fr-par-2",
        )
        session.add(instance)
        await session.commit()
        session.add(
            InstanceAction(
                instance_id=instance.id,
                step="provider_create",
                status=ActionStatus.failed,
                error="no capacity in zone fr-par-2",
                finished_at=utcnow(),
            )
        )
        await session.commit()
        await add_traffic(sessionmaker, seeded, instance.id, count=10)
    await page.goto("/")
    await page.add_script_tag(path=str(AXE))
    found = await audit(page)
    await login(page, seeded)
    for name in (
        "Overview",
        "Instances",
        "Deployments",
        "API keys",
        "Machines",
        "Usage & costs",
        "Providers & prices",
        "Users & projects",
    ):
        await nav(page, name)
        await expect(page.locator("main h1")).to_be_visible()
        await expect(page.locator(".loading")).to_have_count(0)
        found += [f"{name}: {v}" for v in await audit(page)]
    await page.goto(f"/#/instances/{instance.id}")
    await expect(page.get_by_role("table", name="Action log")).to_contain_text("no capacity")
    found += [f"instance detail: {v}" for v in await audit(page)]
    await nav(page, "Deployments")
    await page.get_by_role("button", name="New deployment").click()
    found += [f"deployment form: {v}" for v in await audit(page)]
    assert not found, "\n".join(found)


async def audit(page: Page) -> list[str]:
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations"
        ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => v.id + ' (' + v.impact + '): ' + v.help + ' — '"
        " + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')))"
    )
    return list(result)


async def test_admin_adds_a_member_who_signs_in_until_deactivated(
    page: Page, browser, api_server: ApiServer, sessionmaker
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session)
    await login(page, seeded)
    await nav(page, "Users & projects")
    await page.get_by_label("Project name").fill("research")
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_role("list", name="Projects")).to_contain_text("research")

    form = page.locator("form", has=page.get_by_role("heading", name="New user"))
    await form.get_by_label("E-mail").fill("bob@example.com")
    await form.get_by_label("Initial password").fill("bob-password-123")
    await form.get_by_label("Project").select_option(label="research")
    await form.get_by_role("button", name="Create user").click()
    await expect(
        page.get_by_role("status").filter(has_text="bob@example.com created")
    ).to_be_visible()
    bob = page.get_by_role("table", name="Users").locator("tr", has_text="bob@example.com")
    await expect(bob).to_contain_text("research")
    await expect(bob.get_by_label("Role of bob@example.com")).to_have_value("member")
    await shot(page, "users")

    # Bob signs in (another browser session) and sees his project only, without admin pages.
    other = await browser.new_context(base_url=api_server.url)
    bob_page = await other.new_page()
    await bob_page.goto("/")
    await bob_page.get_by_label("E-mail").fill("bob@example.com")
    await bob_page.get_by_label("Password").fill("bob-password-123")
    await bob_page.get_by_role("button", name="Sign in").click()
    await expect(bob_page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(bob_page.get_by_role("link", name="Users & projects")).to_have_count(0)
    await (
        bob_page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    )
    await expect(bob_page.get_by_label("Project")).to_have_text("research")

    # Deactivated, he can no longer sign in.
    await bob.get_by_role("button", name="Deactivate bob@example.com").click()
    await expect(bob).to_contain_text("Deactivated")
    await bob_page.get_by_role("button", name="Sign out").click()
    await bob_page.get_by_label("E-mail").fill("bob@example.com")
    await bob_page.get_by_label("Password").fill("bob-password-123")
    await bob_page.get_by_role("button", name="Sign in").click()
    await expect(bob_page.get_by_role("alert")).to_have_text("Wrong e-mail or password.")
    await other.close()


async def test_machines_page_shows_a_tunnelled_machine_enrols_another_and_revokes(
    page: Page, api_server: ApiServer, sessionmaker
) -> None:
    """The owner's view of a machine behind NAT: who owns it, its slots, today's GPU-hours
    against its quota, whether it is available and connected; a join command shown once."""
    async with sessionmaker() as session:
        seeded = await seed(session)
        now = utcnow()
        machine = Machine(
            name="desk-gpu",
            owner_id=seeded.user.id,
            public_key="ab" * 32,
            credential_hash=uuid.uuid4().hex,
            credential_expires_at=now + timedelta(days=1),
            gpu_count=2,
            timezone="Europe/Paris",
            quota_gpu_hours_per_day=8.0,
            connected_at=now,
            last_seen_at=now,
        )
        session.add(machine)
        await session.commit()
        session.add(MachineUsage(machine_id=machine.id, day=local_day(now, ZoneInfo("Europe/Paris")),
                                 gpu_seconds=1.5 * 3600))  # fmt: skip
        await session.commit()
    accept_dialogs(page)
    await login(page, seeded)
    await nav(page, "Machines")
    row = page.get_by_role("table", name="Machines").locator(f"tr[data-machine-id='{machine.id}']")
    await expect(row).to_contain_text("desk-gpu")
    await expect(row).to_contain_text(seeded.user.email)
    await expect(row).to_contain_text("Europe/Paris")
    await expect(row).to_contain_text("1.5 GPU-h of 8")
    await expect(row).to_contain_text("Connected")
    await expect(row).to_contain_text("Available")
    await shot(page, "machines")

    await page.get_by_label("Name").fill("lab-box")
    await page.get_by_role("button", name="Create enrolment token").click()
    command = page.get_by_label("Join command")
    await expect(command).to_have_value(
        re.compile(r"^python -m agent join --control-plane \S+ --token ime_")
    )
    await page.get_by_role("button", name="I have saved it").click()
    await expect(command).to_have_count(0)

    await row.get_by_role("button", name="Revoke machine desk-gpu").click()
    await expect(row).to_contain_text("Revoked")
    async with sessionmaker() as session:
        revoked = await session.get(Machine, machine.id)
        assert revoked is not None and revoked.revoked_at is not None
