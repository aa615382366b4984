"""The offline autoscaling benchmark on a small synthetic trace: its output format, and the
oracle as the lower bound of what keeps the SLO."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bench.autoscale.run import main

FIGURES = {
    "gpu_hours": float,
    "slo_attainment": float,
    "ttft_p50_s": float,
    "ttft_p99_s": float,
    "refused": int,
    "scale_actions": int,
}
PEERS = ["static-peak", "skyserve-qps", "kubeai-inflight", "rayserve-ongoing", "dstack-rps"]


def synthetic_trace(path: Path) -> None:
    """Ten minutes of conversation-like requests whose rate climbs from 2 to 30 per second."""
    rng = random.Random(7)
    start = datetime(2023, 11, 16, 18, 0, 0)
    t = 0.0
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    while t < 600:
        t += rng.expovariate(2 + 28 * t / 600)
        stamp = (start + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S.%f")
        lines.append(f"{stamp}0,{rng.randint(50, 2000)},{rng.randint(10, 400)}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One replay of every policy, shared by the tests (about ten seconds)."""
    tmp_path = tmp_path_factory.mktemp("autoscale")
    trace, out = tmp_path / "trace.csv", tmp_path / "out.json"
    synthetic_trace(trace)
    main(["--trace", str(trace), "--out", str(out), "--boot-s", "60", "--max-instances", "8"])
    report: dict = json.loads(out.read_text())
    assert report["trace"] == str(trace)
    return report


def test_replay_writes_the_fixed_format(report: dict) -> None:
    assert report["settings"]["slo_ttft_s"] == 2.0 and report["settings"]["boot_s"] == 60.0
    policies = report["policies"]
    assert {"inventiv", "oracle", *PEERS} <= set(policies)
    for name, figures in policies.items():
        for key, kind in FIGURES.items():
            assert isinstance(figures[key], kind), (name, key, figures)
        assert 0 <= figures["slo_attainment"] <= 1
        assert figures["ttft_p50_s"] <= figures["ttft_p99_s"]
    # Static provisioning at peak pays for the peak all along.
    assert policies["static-peak"]["gpu_hours"] > policies["oracle"]["gpu_hours"]
    assert policies["static-peak"]["scale_actions"] == 0


def test_the_oracle_is_the_lower_bound(report: dict) -> None:
    policies = report["policies"]
    oracle = policies["oracle"]
    # It keeps the SLO at least as well as any policy (here: every request within it) ...
    assert oracle["slo_attainment"] >= max(p["slo_attainment"] for p in policies.values())
    # ... and no policy that keeps it as well uses fewer GPU-hours. (The per-minute oracle
    # before it failed this: 93 % within the SLO on 0.32 GPU-hours against dstack's 99.3 % on
    # 0.29.)
    for name, figures in policies.items():
        if figures["slo_attainment"] >= oracle["slo_attainment"]:
            assert figures["gpu_hours"] >= oracle["gpu_hours"] - 1e-9, (name, figures, oracle)
