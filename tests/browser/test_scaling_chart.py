"""The deployment's scaling chart as an operator sees it, in a real browser against the real API,
database, Redis, Temporal server and worker: the autoscaler, started from the page, scales the
deployment up to its minimum and, once the minimum is lowered, back down by draining; the chart
draws each round's instance count and marks the two decisions that scaled, live, without a
reload. The decisions are the autoscaler's own (AutoscalerWorkflow rounds), none written here."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect
from sqlmodel import col, select

from core.models import Instance, InstanceState
from core.settings import Settings
from tests.browser.conftest import ApiServer
from tests.browser.test_dashboard import SIM_FAST, audit, login, nav, shot
from tests.factories import seed
from tests.workflows.helpers import running_worker, wait_state
from workflows.autoscaler import autoscaler_workflow_id
from workflows.client import terminate_instance

LIVE = [InstanceState.provisioning, InstanceState.booting, InstanceState.ready]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A round a second (15 s by default), so the test sees several rounds between changes."""
    settings.autoscale_interval_s = 1
    return settings


async def instance_levels(chart: Locator) -> list[float]:
    """The instance-count line read off the chart as a viewer reads it: each vertex's height
    against the y axis's labelled ticks, consecutive equal levels counted once."""
    levels: list[float] = await chart.evaluate(
        """(figure) => {
          // Each tick: its label, and the height of its grid line.
          const ticks = [...figure.querySelectorAll('[data-panel="instances"] [data-tick]')]
            .map((g) => [Number(g.querySelector('text').textContent),
                         Number(g.querySelector('line').getAttribute('y1'))]);
          const [[v0, y0], [v1, y1]] = [ticks[0], ticks[ticks.length - 1]];
          const value = (y) => v0 + ((y - y0) * (v1 - v0)) / (y1 - y0);
          const out = [];
          for (const line of figure.querySelectorAll('polyline[data-series="instances"]')) {
            for (const pair of line.getAttribute('points').trim().split(/\\s+/)) {
              const v = Math.round(value(Number(pair.split(',')[1])) * 100) / 100;
              if (out[out.length - 1] !== v) out.push(v);
            }
          }
          return out;
        }"""
    )
    return levels


async def until_levels(chart: Locator, wanted: list[float], timeout: float = 30) -> list[float]:
    deadline = time.monotonic() + timeout
    levels = await instance_levels(chart)
    while levels != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        levels = await instance_levels(chart)
    return levels


def collapsed(values: list[Any]) -> list[float]:
    out: list[float] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(float(v))
    return out


async def test_scaling_chart_draws_instances_and_marks_each_scale_decision_live(
    page: Page, api_server: ApiServer, sessionmaker, temporal_client
) -> None:
    settings = api_server.settings
    async with sessionmaker() as session:
        seeded = await seed(session, engine_args=SIM_FAST)
    dep = seeded.deployment

    async with running_worker(settings, temporal_client):
        await login(page, seeded)
        # The policy through the API, as a user's script would set it: a minimum of two, and
        # idle instances drained at once when the minimum drops (no delay).
        patched = await page.request.patch(
            f"/api/v1/deployments/{dep.id}",
            headers={"X-Requested-With": "inventiv-dashboard"},
            data={
                "min_instances": 2,
                "max_instances": 3,
                "autoscaling": {
                    "window_s": 5,
                    "scale_down_delay_s": 0,
                    "scale_down_active_per_gpu": 1,
                },
            },
        )
        assert patched.ok, await patched.text()

        await nav(page, "Deployments")
        card = page.locator(f'[data-deployment-id="{dep.id}"]').first
        await expect(card.get_by_role("heading", name=dep.name)).to_be_visible()
        # Autoscaling off and never decided: no chart yet.
        await expect(card.locator("figure.scaling-chart")).to_have_count(0)
        await page.evaluate("window.__stillTheSamePage = true")

        await card.get_by_role("button", name="Start autoscaling").click()
        chart = card.locator("figure.scaling-chart")
        markers = chart.get_by_role("list", name=f"Scale decisions of {dep.name}").get_by_role(
            "button"
        )
        # The first round orders the two instances the minimum asks for: one marker, live.
        await expect(markers).to_have_count(1, timeout=30_000)
        up = markers.first
        await expect(up).to_have_attribute("data-action", "scale_up")
        await expect(up).to_have_accessible_name(
            re.compile(
                r"^Scale up \+2 at \d\d:\d\d:\d\d \(0 instances then\): "
                r"below minimum \(0 < 2\); started 2$"
            )
        )

        # Both boot (the card's instance table says so), then the minimum goes down to one.
        ready_rows = card.get_by_role("table", name=f"Instances of {dep.name}").locator(
            'tr[data-state="ready"]'
        )
        await expect(ready_rows).to_have_count(2, timeout=90_000)
        await card.get_by_role("button", name=f"Edit {dep.name}").click()
        form = page.locator("form", has=page.get_by_role("heading", name=f"Edit {dep.name}"))
        await form.get_by_label("Minimum instances").fill("1")
        await form.get_by_role("button", name="Save").click()
        await expect(page.get_by_role("status").filter(has_text="saved")).to_be_visible()

        # The next round drains one: a second marker, down, with its reason and outcome.
        await expect(markers).to_have_count(2, timeout=30_000)
        down = markers.nth(1)
        await expect(down).to_have_attribute("data-action", "scale_down")
        await expect(down).to_have_attribute("data-delta", "-1")
        await expect(down).to_have_accessible_name(
            re.compile(r"^Scale down -1 at \d\d:\d\d:\d\d \(2 instances then\): .+; drained 1$")
        )
        await down.hover()
        readout = chart.get_by_test_id("scaling-readout")
        await expect(readout).to_contain_text("Scale down -1")
        await expect(readout).to_contain_text("drained 1")
        await expect(chart.get_by_role("img")).to_have_accessible_name(
            re.compile(r"; 1 scale-up, 1 scale-down$")
        )

        # The instance line follows the rounds: none, the two ordered, one after the drain.
        levels = await until_levels(chart, [0, 2, 1])
        assert levels == [0, 2, 1], levels
        listed = await page.request.get(
            f"/api/v1/deployments/{dep.id}/decisions", params={"limit": 2000}
        )
        assert listed.ok, await listed.text()
        decisions = list(reversed(await listed.json()))  # oldest first
        assert collapsed([d["instances"] for d in decisions]) == [0, 2, 1]
        scaled = [d for d in decisions if d["action"] != "none"]
        assert [(d["action"], d["delta"]) for d in scaled] == [
            ("scale_up", 2),
            ("scale_down", -1),
        ]
        assert await page.evaluate("window.__stillTheSamePage === true"), "the page was reloaded"
        assert await audit(page) == []
        await shot(page, "deployment-scaling-chart")

        # Autoscaling off from the page ends the autoscaler; then the instances go.
        await card.get_by_role("button", name="Stop autoscaling").click()
        handle = temporal_client.get_workflow_handle(autoscaler_workflow_id(str(dep.id)))
        assert await asyncio.wait_for(handle.result(), 30) == "autoscaling turned off"
        async with sessionmaker() as session:
            live = (
                await session.exec(
                    select(Instance).where(
                        Instance.deployment_id == dep.id, col(Instance.state).in_(LIVE)
                    )
                )
            ).all()
        for inst in live:
            await terminate_instance(temporal_client, inst.workflow_id)
        for inst in live:
            await wait_state(sessionmaker, inst.id, InstanceState.terminated)
