"""`python -m bench.load`, the load an operator runs in `make dev` to watch autoscaling: run as a
stranger would, a process against a real gateway and engine."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.factories import Seeded
from tests.gateway.conftest import MODEL, Engines, Registry, RunningGateway
from tests.gateway.test_routing import ready

ROOT = Path(__file__).resolve().parents[2]


async def load(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode()


async def test_streams_follow_the_profile_and_report_what_they_saw(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    engine = await engines.start("e")
    engine.behaviour.tokens, engine.behaviour.token_delay_s = 5, 0.05
    await registry.put(registry.instance(engines.servers["e"].url))
    await ready(gateway, 1)
    code, out = await load(
        "--gateway", gateway.url, "--api-key", seeded.api_key, "--model", MODEL,
        "--profile", "3x2,0x1", "--every-s", "0.5", "--max-tokens", "5",
    )  # fmt: skip
    assert code == 0, out
    assert "stage 1/2 (3 streams, 2 s)" in out and "stage 2/2 (0 streams, 1 s)" in out
    done = re.search(r"done: in flight 0, completed (\d+), failed 0 \(none\), TTFT p50 \d+ ms", out)
    assert done, out
    # Three streams of ~0.25 s for 2 s: about two dozen, each one reaching the engine.
    assert int(done[1]) >= 6 and len(engine.requests) == int(done[1])
    assert all(r.body.get("stream") for r in engine.requests)


async def test_refused_requests_and_bad_profiles_are_said_plainly(
    gateway: RunningGateway, seeded: Seeded, engines: Engines, registry: Registry
) -> None:
    code, out = await load(
        "--gateway", gateway.url, "--api-key", "sk-inv-not-a-key", "--profile", "1x1",
    )  # fmt: skip
    assert code == 1 and "(HTTP 401:" in out, out
    code, out = await load("--gateway", gateway.url, "--api-key", "k", "--profile", "six")
    assert code == 2 and "bad stage 'six': write STREAMSxSECONDS" in out, out
