"""Load for watching the autoscaler at work in `make dev`: concurrent streamed chat completions
through the gateway, following a profile of stages, with a line of figures every few seconds.

    .venv/bin/python -m bench.load                        # demo-llm, 1 -> 6 -> 1 streams
    .venv/bin/python -m bench.load --profile 2x30,12x180,0x300 --max-tokens 400

A stage `CxS` keeps C streams in flight for S seconds (each finished stream is replaced at once).
Turn autoscaling on for the deployment first (dashboard: Deployments, or `PATCH
/api/v1/deployments/{id}` with `autoscaling_enabled`) with short delays, then watch its
instances and decisions come and go on the dashboard (the simulator's modelled GPU utilisation
drives the scale-down as a GPU's would). The key and the gateway default to what `make dev`
wrote in `.inventiv/dev-credentials.json` and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEV_CREDENTIALS = Path(".inventiv/dev-credentials.json")


@dataclass(frozen=True)
class Stage:
    streams: int
    seconds: float


def parse_profile(text: str) -> list[Stage]:
    """'1x60,6x120' -> [Stage(1, 60), Stage(6, 120)]; a clear error for anything else."""
    stages = []
    for part in text.split(","):
        streams, sep, seconds = part.strip().partition("x")
        try:
            stage = Stage(int(streams), float(seconds))
        except ValueError:
            stage = None
        if not sep or stage is None or stage.streams < 0 or stage.seconds <= 0:
            raise argparse.ArgumentTypeError(
                f"bad stage {part!r}: write STREAMSxSECONDS, e.g. 6x120 (6 streams for 120 s)"
            )
        stages.append(stage)
    return stages


@dataclass
class Tally:
    started: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    ttfts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


async def one_stream(http: httpx.AsyncClient, body: dict, tally: Tally) -> None:
    tally.started += 1
    tally.in_flight += 1
    asked = time.monotonic()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                tally.fail(f"HTTP {response.status_code}")
                return
            first = True
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if '"error"' in line and json.loads(line[6:]).get("error"):
                    tally.fail("error event")
                    return
                if first:
                    tally.ttfts.append(time.monotonic() - asked)
                    first = False
        tally.completed += 1
    except httpx.HTTPError as exc:
        tally.fail(type(exc).__name__)
    finally:
        tally.in_flight -= 1


async def run_stage(
    http: httpx.AsyncClient,
    body: dict,
    stage: Stage,
    running: set[asyncio.Task[None]],
    tally: Tally,
    every_s: float,
    label: str,
) -> None:
    """Keeps `stage.streams` streams in flight until the stage's time is up (`running` carries
    over: going down, streams in flight finish and are not replaced)."""
    end = time.monotonic() + stage.seconds
    reported = time.monotonic()
    while time.monotonic() < end:
        while len(running) < stage.streams:
            task = asyncio.create_task(one_stream(http, body, tally))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.sleep(0.05)
        if time.monotonic() - reported >= every_s:
            reported = time.monotonic()
            print(report(tally, label), flush=True)


def report(tally: Tally, label: str) -> str:
    recent = tally.ttfts[-50:]
    ttft = f"{statistics.median(recent) * 1000:.0f} ms" if recent else "-"
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(tally.errors.items())) or "none"
    return (
        f"[{time.strftime('%H:%M:%S')}] {label}: in flight {tally.in_flight}, "
        f"completed {tally.completed}, failed {tally.failed} ({errors}), TTFT p50 {ttft}"
    )


async def main_async(args: argparse.Namespace) -> int:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": args.max_tokens,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {args.api_key}"}
    tally = Tally()
    running: set[asyncio.Task[None]] = set()
    timeout = httpx.Timeout(args.request_timeout_s, connect=10)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=args.gateway, headers=headers, timeout=timeout, limits=limits
    ) as http:
        for n, stage in enumerate(args.profile, 1):
            label = (
                f"stage {n}/{len(args.profile)} ({stage.streams} streams, {stage.seconds:.0f} s)"
            )
            print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
            await run_stage(http, body, stage, running, tally, args.every_s, label)
        if running:
            await asyncio.wait(running, timeout=args.request_timeout_s)
    print(report(tally, "done"), flush=True)
    return 0 if tally.completed and not tally.failed else 1


def default_key() -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return str(json.loads(DEV_CREDENTIALS.read_text())["api_key"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateway", default="http://localhost:8080", help="the gateway's URL")
    parser.add_argument("--api-key", default=None, help="default: make dev's demo key")
    parser.add_argument("--model", default="demo-llm")
    parser.add_argument(
        "--profile",
        type=parse_profile,
        default=parse_profile("1x60,6x240,1x300"),
        help="stages STREAMSxSECONDS, comma-separated (default 1x60,6x240,1x300)",
    )
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--every-s", type=float, default=5.0, help="a line of figures this often")
    parser.add_argument("--request-timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    args.api_key = args.api_key or default_key()
    if not args.api_key:
        parser.error(f"no --api-key and no {DEV_CREDENTIALS} (start `make dev` first)")
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
