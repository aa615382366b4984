"""`python -m bench.gateway.run`, the gateway benchmark, in a short run of its many-keys case:
the keys are real rows the gateway checks, the load spreads over them, none is refused, and each
request is admitted by its own Redis call (no lease shortcut)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("nginx") is None,
    reason="the gateway benchmark needs wrk and nginx (apt-get install -y wrk nginx)",
)


def test_many_keys_case_spreads_the_load_over_limited_keys(tmp_path: Path) -> None:
    keys = 2000  # at ~1,000-5,000 req/s here, 0.5-2.5 requests a second per key: no leases
    completed = subprocess.run(
        [
            sys.executable, "-m", "bench.gateway.run",
            "--case", "many-keys", "--keys", str(keys), "--workers", "1",
            "--only", "direct,gateway", "--seconds", "1", "--stream-requests", "20",
            "--no-profile", "--results", str(tmp_path), "--name", "short",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "short.json").read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"direct", "inventiv-gateway x1"}
    assert all(r["case"] == "many-keys" for r in rows.values())
    gateway = rows["inventiv-gateway x1"]
    assert gateway["error"] is None, gateway["error"]
    assert gateway["c32"]["errors"] == 0 and gateway["c1"]["errors"] == 0  # none refused
    extra = gateway["extra"]
    # wrk does not count the requests still in flight when it stops (up to one a connection):
    # in so short a run they are a few percent more logs and counts than requests "sent".
    assert 1 <= extra["request_logs_per_request"] < 1.05
    assert 1 <= extra["metrics_requests_per_request"] < 1.05
    # wrk's script sent every key: the request logs name them all.
    assert extra["keys_used"] == keys
    # Admission (TIME, ZREMRANGEBYSCORE, ZCARD, ...) and the TPM settlement run in Redis for
    # every request; a leased slot would need none.
    assert extra["redis_commands_per_request"] > 8
    markdown = (tmp_path / "short.md").read_text()
    assert "## Many keys, several instances" in markdown
    assert f"{keys:,} API keys" in markdown
