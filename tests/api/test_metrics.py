"""Chart series: request rate, percentiles and error rate per bucket; GPU load per instance;
instance detail with its latest metrics and agent status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from core.models import InstanceMetric, utcnow
from tests.api.conftest import Tenant, add_instance, add_request_logs


async def test_request_series_is_bucketed(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    now = utcnow().replace(second=0, microsecond=0)
    minute_a, minute_b = now - timedelta(minutes=3), now - timedelta(minutes=1)
    await add_request_logs(
        sessionmaker,
        alice,
        *[{"at": minute_a + timedelta(seconds=i), "latency_ms": 100.0 * (i + 1),
           "ttft_ms": 10.0 * (i + 1), "output_tokens": 60} for i in range(10)],
        {"at": minute_b, "status_code": 503, "latency_ms": 5.0},
        {"at": minute_b + timedelta(seconds=1)},
    )  # fmt: skip
    params = {
        "start": (now - timedelta(minutes=10)).isoformat(),
        "end": now.isoformat(),
        "step_s": 60,
        "deployment_id": str(alice.deployment.id),
    }
    series = await client.get("/api/v1/metrics/requests", params=params, headers=alice.headers)
    assert series.status_code == 200, series.text
    points = series.json()["points"]
    assert series.json()["step_s"] == 60
    assert [p["requests"] for p in points] == [10, 2]
    first, second = points
    assert first["request_rate_per_s"] == 10 / 60
    assert first["output_tokens_per_s"] == 600 / 60
    assert first["latency_p50_ms"] == 550.0
    assert first["ttft_p95_ms"] == pytest.approx(95.5)
    assert first["error_rate"] == 0 and second["error_rate"] == 0.5

    # A month asked with a tiny step is downsampled to at most 1000 buckets.
    month = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat(), "step_s": 1}
    coarse = await client.get("/api/v1/metrics/requests", params=month, headers=alice.headers)
    assert coarse.json()["step_s"] >= 30 * 86400 / 1000
    assert sum(p["requests"] for p in coarse.json()["points"]) == 12


async def test_gpu_series_and_instance_detail(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    instance = await add_instance(sessionmaker, alice)
    now = utcnow()
    async with sessionmaker() as session:
        for i, util in enumerate((20.0, 40.0, 90.0)):
            session.add(
                InstanceMetric(
                    instance_id=instance.id,
                    at=now - timedelta(seconds=30 - i),
                    gpu_utilization=util,
                    gpu_memory_used_mb=1000.0 * (i + 1),
                    gpu_memory_total_mb=80_000.0,
                    kv_cache_usage=0.1 * (i + 1),
                )
            )
        await session.commit()
    params = {"instance_id": str(instance.id), "step_s": 3600}
    gpu = (await client.get("/api/v1/metrics/gpu", params=params, headers=alice.headers)).json()
    [serie] = gpu["instances"]
    assert serie["instance_id"] == str(instance.id)
    assert sum(p["gpu_utilization"] for p in serie["points"]) / len(serie["points"]) == 50.0

    detail = (await client.get(f"/api/v1/instances/{instance.id}", headers=alice.headers)).json()
    assert detail["latest_metrics"]["gpu_utilization"] == 90.0
    assert detail["latest_metrics"]["gpu_memory_used_mb"] == 3000.0
    assert detail["agent_status"] == "unknown"  # no heartbeat yet
    assert detail["price_per_hour"] == alice.instance_type.price_per_hour
    assert detail["temporal_url"].endswith(f"/workflows/instance-{instance.id}")
