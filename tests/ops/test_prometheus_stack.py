"""A real Prometheus over the real stack: API, gateway and worker in this process, an agent and
its simulated engine started by the local provider. Prometheus finds the agent through the
API's service discovery, scrapes everything, and answers PromQL about the traffic sent; the
Grafana dashboards are then checked against the metric names the services really export."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from api.app import create_app
from core.embedded import free_port
from core.observability import worker_metrics_runtime
from core.settings import Settings
from gateway.app import create_app as create_gateway
from inventiv.ops.prometheus import LocalPrometheus, installed, scrape_config
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.workflows.helpers import running_worker

MODEL = "prom-model"
TOKEN = "prometheus-scrape-token"
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
# Our services' metric names all start so (PromQL functions, labels and keywords never do),
# and `up`, which Prometheus records for every target.
METRIC_NAME = re.compile(r"\b((?:inventiv|temporal)_[a-z0-9_]+|up)\b")

pytestmark = pytest.mark.skipif(
    not installed(), reason="prometheus is missing: apt-get install prometheus (make system-deps)"
)


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page has, and those a labelled metric that has not been
    used yet will have (prometheus_client announces its family, without samples)."""
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        if not family.samples:
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every panel and template variable."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["expr"]))
        for variable in board["templating"]["list"]:
            found.append((path.name, f"${variable['name']}", variable["query"]["query"]))
    return found


async def query(prom: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    response = await prom.get("/api/v1/query", params={"query": promql})
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


async def eventually(prom: httpx.AsyncClient, promql: str, timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await query(prom, promql)
        if result:
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"no result for {promql} after {timeout_s:.0f}s")


async def test_prometheus_scrapes_the_stack_and_answers_ttft_p95_per_deployment(
    settings: Settings, sessionmaker: Any, stack: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("INVENTIV_METRICS_TOKEN", TOKEN)
    async with sessionmaker() as session:
        seeded = await seed(session, model=MODEL, engine_args={"model-load-delay-s": 0.2})
    worker_metrics = f"127.0.0.1:{free_port()}"
    worker_client = await Client.connect(
        stack.temporal_address, runtime=worker_metrics_runtime(worker_metrics)
    )
    api_server = RunningServer(create_app(settings), settings.api_port)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN)
    prometheus = LocalPrometheus(tmp_path / "prometheus", "127.0.0.1", free_port())
    config = scrape_config(
        api=f"127.0.0.1:{settings.api_port}",
        gateways=[f"127.0.0.1:{settings.gateway_port}"],
        worker=worker_metrics,
        token_file=token_file,
        scrape_interval="1s",
    )
    async with running_worker(settings, worker_client):
        await api_server.start()
        await gateway_server.start()
        await asyncio.to_thread(prometheus.start, config)
        try:
            async with (
                httpx.AsyncClient(base_url=api_server.url, timeout=30) as api,
                httpx.AsyncClient(base_url=prometheus.url, timeout=10) as prom,
            ):
                login = await api.post(
                    "/api/v1/auth/login",
                    json={"email": seeded.user.email, "password": seeded.password},
                )
                api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                api.cookies.clear()
                created = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
                assert created.status_code == 202, created.text
                instance_id = created.json()["id"]
                deadline = time.monotonic() + 90
                while (await api.get(f"/api/v1/instances/{instance_id}")).json()[
                    "state"
                ] != "ready":
                    assert time.monotonic() < deadline, "the instance did not become ready"
                    await asyncio.sleep(0.3)

                # rate() counts from a series' first sample: Prometheus must have read the
                # model's TTFT series (at 0, the gateway declares a deployment's series before
                # its first request) before the traffic, or a burst shorter than a scrape
                # interval is all before that first sample and the p95 is NaN.
                ttft_count = (
                    "inventiv_gateway_time_to_first_token_seconds_count"
                    f'{{job="gateway",model="{MODEL}"}}'
                )
                before = await eventually(prom, ttft_count)
                assert float(before[0]["value"][1]) == 0, before

                client = openai.AsyncOpenAI(
                    api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
                )
                for i in range(12):
                    stream = await client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"count to {i}"}],
                        stream=True,
                        max_tokens=6,
                    )
                    assert [c async for c in stream]

                # Every job is up, the agent's found through the API's service discovery.
                up = await eventually(prom, 'up{job="agents"} == 1')
                await eventually(prom, "count(count by (job) (up == 1)) >= 5")  # each scraped once
                jobs = {r["metric"]["job"] for r in await query(prom, "up == 1")}
                assert jobs == {"api", "gateway", "worker", "agents", "engines"}, jobs
                agent = await eventually(
                    prom, f'inventiv_agent_engine_ready{{instance_id="{instance_id}"}}'
                )
                assert agent[0]["metric"]["model"] == MODEL and up

                # And has scraped all of it, before the p95 is asked.
                await eventually(prom, f"{ttft_count} >= 12")
                p95 = await eventually(
                    prom,
                    "histogram_quantile(0.95, sum by (model, le) ("
                    "rate(inventiv_gateway_time_to_first_token_seconds_bucket[30s])))",
                )
                by_model = {r["metric"]["model"]: float(r["value"][1]) for r in p95}
                # The gateway's metrics registry is the test process's: models that earlier
                # tests' gateways served may be there too.
                assert MODEL in by_model, by_model
                assert 0 < by_model[MODEL] < 5, by_model
                ready = await eventually(
                    prom, f'inventiv_instances{{model="{MODEL}",state="ready"}}'
                )
                assert float(ready[0]["value"][1]) == 1

                # The dashboards name only what the services export.
                exported = {"up"}
                pages = [
                    (api_server.url, {"Authorization": f"Bearer {TOKEN}"}),
                    (gateway_server.url, {"Authorization": f"Bearer {TOKEN}"}),
                    (f"http://{worker_metrics}", {}),
                ]
                agent_url = (await api.get(f"/api/v1/instances/{instance_id}")).json()
                pages.append((agent_url["agent_url"], {}))
                for base, headers in pages:
                    page = await api.get(f"{base}/metrics", headers=headers)
                    assert page.status_code == 200, base
                    exported |= exported_names(page.text)
            checked = 0
            unknown = []
            for board, title, expr in dashboard_queries():
                names = METRIC_NAME.findall(expr)
                assert names, f"{board} / {title}: no metric of ours in {expr}"
                unknown += [f"{board} / {title}: {n}" for n in names if n not in exported]
                checked += 1
            assert checked > 25
            assert not unknown, "dashboard queries name metrics nobody exports:\n" + "\n".join(
                unknown
            )
        finally:
            prometheus.stop()
            await gateway_server.stop()
            await api_server.stop()
