"""Fleet routing benchmark: N simulated engines (prefix caching on, a bounded KV cache, the
simulator's timing model) behind each router, the same workloads, one run, side by side.

    python -m bench.routing.run                      # every target, every workload
    python -m bench.routing.run --quick              # shorter workloads
    python -m bench.routing.run --only ours-prefix_aware,vllm-router-cache_aware --workloads shared_prefix
    python -m bench.routing.run --merge --workloads azure_conv_trace   # redo one, keep the rest
    python -m bench.routing.run --render-only        # the .md and .png again from the .json

Targets: our gateway with each routing strategy (least_load, sticky_user, prefix_aware);
vllm-router in each of its modes that needs no engine-side KV events (round_robin, random,
cache_aware, power_of_two, consistent_hash, sticky_least_loaded; from --tools-venv, as
`make bench-gateway` installs it); nginx round-robin (the plain baseline). Each target gets fresh
engines, so every one starts with empty caches.

Workloads (bench/routing/workloads.py): shared-prefix multi-tenant chat, multi-turn conversations
whose history grows, and the Azure conversation trace (--azure-trace; no shared prefixes).

Figures per target and workload: TTFT p50/p90/p99 (streamed, first content chunk, at the client),
output tokens/s over the run, the engines' prefix-cache hit rate (vllm:prefix_cache_hits /
vllm:prefix_cache_queries, read from each engine before and after) and requests per engine.
Results: bench/results/routing.json and .md, and bench/results/routing.png when matplotlib is
installed, written after every target; the goals of issue 16 checked at the end of the .md. A
partial run (--only, --quick or fewer workloads) writes routing-partial.* instead, unless --merge:
then it keeps the earlier rows of routing.json that it does not redo, each workload with the date,
load and commit it was measured at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.gateway.run import MODEL, Stack, free_port, start_nginx, stop, wait_http
from bench.routing.workloads import (
    Turn,
    Workload,
    azure_conversation_trace,
    conversations,
    shared_prefix,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
WORKLOADS = ("shared_prefix", "conversations", "azure_conv_trace")
OUR_STRATEGIES = ("least_load", "sticky_user", "prefix_aware")
VLLM_ROUTER_POLICIES = (
    "round_robin",
    "random",
    "cache_aware",
    "power_of_two",
    "consistent_hash",
    "sticky_least_loaded",
)


@dataclass
class Fleet:
    engines: int
    kv_cache_tokens: int
    block_size: int = 16

    def start(self, workdir: Path) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
        urls, procs = [], []
        for index in range(self.engines):
            port = free_port()
            command = [sys.executable, "-m", "agent.sim", "--model", MODEL, "--port", str(port)]
            command += ["--host", "127.0.0.1", "--seed", str(index), "--model-load-delay-s", "0"]
            command += ["--kv-cache-tokens", str(self.kv_cache_tokens)]
            command += ["--block-size", str(self.block_size)]
            log = (workdir / f"engine{index}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        return urls, procs


# ----------------------------------------------------------------------------- targets


class RoutingStack(Stack):
    """bench/gateway's PostgreSQL + Redis with its deployment and key; the routing registry is
    rewritten for each target's engines and strategy."""

    def register(self, urls: list[str], routing: str) -> None:
        asyncio.run(self._register(urls, routing))

    async def _register(self, urls: list[str], routing: str) -> None:
        import redis.asyncio as aioredis
        from sqlmodel import select

        from core.db import make_engine, make_sessionmaker
        from core.models import Deployment
        from core.redis_keys import ROUTING_REGISTRY
        from core.wire import RoutableInstance, RoutingStrategy

        engine = make_engine(self.db_url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session:
                deployment = (await session.exec(select(Deployment))).one()
        finally:
            await engine.dispose()
        client = aioredis.Redis.from_url(self.redis_url)
        await client.delete(ROUTING_REGISTRY)
        for url in urls:
            instance = RoutableInstance(
                instance_id=str(uuid.uuid4()),
                deployment_id=str(deployment.id),
                project_id=str(deployment.project_id),
                model=MODEL,
                engine_url=url,
                routing=RoutingStrategy(routing),
            )
            await client.hset(ROUTING_REGISTRY, instance.instance_id, instance.model_dump_json())
        await client.aclose()


def start_ours(stack: RoutingStack, port: int, fleet: Fleet) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "INVENTIV_DATABASE_URL": stack.db_url,
        "INVENTIV_REDIS_URL": stack.redis_url,
        "INVENTIV_SECRET_KEY": "bench-" + secrets.token_urlsafe(16),
        "INVENTIV_HOST": "127.0.0.1",
        "INVENTIV_GATEWAY_PORT": str(port),
        "INVENTIV_GATEWAY_WORKERS": "1",
        # The index remembers about what each engine's KV cache holds.
        "INVENTIV_GATEWAY_PREFIX_INDEX_BLOCKS": str(fleet.kv_cache_tokens // fleet.block_size),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, start_new_session=True
    )


def start_vllm_router(
    tools_venv: Path, port: int, urls: list[str], policy: str, workdir: Path
) -> subprocess.Popen[bytes]:
    command = [str(tools_venv / "bin" / "vllm-router"), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--policy", policy, "--worker-urls", *urls]
    command += ["--log-level", "warning", "--request-timeout-secs", "600"]
    log = (workdir / f"vllm-router-{policy}.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


NGINX_ROUND_ROBIN = """
  upstream engines {{ {servers} keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 16m;
    location / {{
      proxy_pass http://engines; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_read_timeout 600s;
    }}
  }}
"""


# ----------------------------------------------------------------------------- the client


@dataclass
class Outcome:
    ttft_s: float | None = None
    output_tokens: int = 0
    finished_at: float = 0.0
    error: str | None = None


async def send(client: httpx.AsyncClient, url: str, key: str | None, turn: Turn) -> Outcome:
    outcome = Outcome()
    # The session named both ways: the `user` field (our sticky_user) and X-Session-ID, which
    # vllm-router's consistent_hash and sticky_least_loaded read (0.1.17 ignores the `user` field
    # of a chat completion: every request hashed alike, to one engine).
    headers = {"X-Session-ID": turn.user}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": MODEL,
        "messages": turn.messages,
        "max_tokens": turn.max_tokens,
        "stream": True,
        "user": turn.user,
    }
    started = time.monotonic()
    answer: list[str] = []
    try:
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                outcome.error = f"HTTP {response.status_code}"
                await response.aread()
                return outcome
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if outcome.ttft_s is None:
                            outcome.ttft_s = time.monotonic() - started
                        outcome.output_tokens += 1
                        answer.append(text)
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
    finally:
        # The next turns carry this one's history, whatever came of it (a failed turn too:
        # otherwise they would be sent with the history of the previous target's run, or none).
        outcome.finished_at = time.monotonic()
        turn_answer = "".join(answer)
        for follower in turn.followers:
            follower.messages = [
                *turn.messages,
                {"role": "assistant", "content": turn_answer},
                {"role": "user", "content": follower.next_user_message or ""},
            ]
    return outcome


async def drive(url: str, key: str | None, workload: Workload) -> tuple[list[Outcome], float]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.monotonic()

        async def one(turn: Turn, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            outcome = await send(client, url, key, turn)
            outcomes.append(outcome)
            await asyncio.gather(
                *(one(follower, time.monotonic() + follower.at) for follower in turn.followers)
            )

        await asyncio.gather(*(one(turn, start + turn.at) for turn in workload.turns))
        makespan = time.monotonic() - start
    return outcomes, makespan


async def engine_counters(urls: list[str]) -> list[dict[str, float]]:
    names = {
        "hits": "vllm:prefix_cache_hits_total",
        "queries": "vllm:prefix_cache_queries_total",
        "requests": "vllm:request_success_total",
    }
    found = []
    async with httpx.AsyncClient(timeout=10) as client:
        for url in urls:
            text = (await client.get(url + "/metrics")).text
            values = {}
            for key, name in names.items():
                pattern = rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$"
                values[key] = sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))
            found.append(values)
    return found


@dataclass
class Row:
    target: str
    workload: str
    requests: int = 0
    errors: int = 0
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    output_tokens_per_s: float | None = None
    engine_hit_rate: float | None = None
    requests_per_engine: list[int] = field(default_factory=list)
    note: str = ""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(target: str, url: str, key: str | None, engines: list[str], workload: Workload) -> Row:
    before = asyncio.run(engine_counters(engines))
    outcomes, makespan = asyncio.run(drive(url, key, workload))
    after = asyncio.run(engine_counters(engines))
    row = Row(target, workload.name, requests=len(outcomes))
    row.errors = sum(1 for o in outcomes if o.error)
    ttfts = [o.ttft_s for o in outcomes if o.ttft_s is not None]
    if ttfts:
        row.ttft_p50_s = percentile(ttfts, 0.5)
        row.ttft_p90_s = percentile(ttfts, 0.9)
        row.ttft_p99_s = percentile(ttfts, 0.99)
    row.output_tokens_per_s = sum(o.output_tokens for o in outcomes) / makespan
    hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before, strict=True))
    queries = sum(a["queries"] - b["queries"] for a, b in zip(after, before, strict=True))
    row.engine_hit_rate = hits / queries if queries else None
    row.requests_per_engine = [
        int(a["requests"] - b["requests"]) for a, b in zip(after, before, strict=True)
    ]
    if row.errors:
        kinds = sorted({o.error for o in outcomes if o.error})
        row.note = f"errors: {', '.join(str(k) for k in kinds)}"
    return row


# ----------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_s(value: float | None) -> str:
    """Seconds to 3 significant digits at least: 0.084 and 0.086 s must not both read 0.09 (a
    goal is within 5 %)."""
    if value is None:
        return "—"
    return f"{value:.{3 if value < 1 else 2 if value < 10 else 1}f}"


def render_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        "# Fleet routing benchmark",
        "",
        f"{meta['fleet']}. Timing is the simulator's model (Llama-3.1-8B on an H100: 50 us per "
        "prefilled token, 8 ms per decode step), so these compare routers, not hardware. Every "
        "target of a workload was measured in the same run, one after the other, each with fresh "
        "engines.",
        "",
    ]
    runs = meta.get("runs", {})
    for name, description in meta["workloads"].items():
        lines += [f"## {name}", "", description]
        if name in runs:
            lines[-1] += f". Measured in the run started {describe_run(runs[name])}."
        lines += [
            "",
            "| target | TTFT p50 s | p90 s | p99 s | output tok/s | engine hit rate | requests per "
            "engine | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r.workload == name):
            lines.append(
                f"| {row.target} | {fmt_s(row.ttft_p50_s)} | {fmt_s(row.ttft_p90_s)} | "
                f"{fmt_s(row.ttft_p99_s)} | {fmt(row.output_tokens_per_s, 0)} | "
                f"{fmt(row.engine_hit_rate)} | {' / '.join(map(str, row.requests_per_engine))} | "
                f"{row.errors}{' ' + row.note if row.note else ''} |"
            )
        lines.append("")
    verdicts = goal_lines(rows)
    if verdicts:
        lines += ["## Goals (issue 16)", "", *(f"- {line}" for line in verdicts), ""]
    return "\n".join(lines)


def describe_run(run: dict[str, Any]) -> str:
    """When, where and which code a workload's rows were measured at."""
    text = f"{run['when']}, {run['machine']}"
    if run.get("load"):
        text += f", load average {run['load']} over its targets"
    if run.get("commit"):
        text += f", code at {run['commit']}"
    return text


def plot(rows: list[Row], path: Path) -> bool:
    """Per workload, each target's TTFT p90 (bar, labelled) and p50 (the darker part), from 0 on
    a linear axis, so bar lengths compare (a log axis that starts where it likes made 0.11 s
    against 0.17 s look tenfold)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(r.workload for r in rows))
    figure, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.8), squeeze=False)
    for axis, name in zip(axes[0], workloads, strict=True):
        chosen = [r for r in rows if r.workload == name and r.ttft_p90_s is not None]
        labels = [r.target.replace("vllm-router-", "vr-") for r in chosen]
        ours = [r.target.startswith("ours") for r in chosen]
        p90 = [r.ttft_p90_s or 0.0 for r in chosen]
        p50 = [r.ttft_p50_s or 0.0 for r in chosen]
        axis.barh(labels, p90, color=["#8fd18f" if o else "#c8c8c8" for o in ours], label="p90")
        axis.barh(labels, p50, color=["tab:green" if o else "tab:gray" for o in ours], label="p50")
        for y, value in enumerate(p90):
            axis.text(value, y, f" {fmt_s(value)}", va="center", fontsize=8)
        axis.set_xlim(0, max(p90, default=1.0) * 1.2)
        axis.set_title(f"{name}: TTFT p50 / p90 (s)")
        axis.invert_yaxis()
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------- main


def build_workloads(args: argparse.Namespace) -> list[Workload]:
    scale = 0.5 if args.quick else 1.0
    chosen = set(args.workloads.split(","))
    workloads = []
    if "shared_prefix" in chosen:
        workloads.append(
            shared_prefix(
                tenants=30,
                context_tokens=6000,
                question_tokens=1200,
                users=5,
                rate=args.shared_prefix_rate,
                seconds=40 * scale,
                max_tokens=32,
            )
        )
    if "conversations" in chosen:
        workloads.append(
            conversations(
                count=int(48 * scale),
                system_tokens=1000,
                message_tokens=300,
                turns_each=6,
                think_s=2.0,
                seconds=40 * scale,
                max_tokens=64,
            )
        )
    if "azure_conv_trace" in chosen:
        if args.azure_trace.is_file():
            workloads.append(
                azure_conversation_trace(
                    args.azure_trace,
                    requests=int(300 * scale),
                    speedup=1.5,
                    max_tokens_cap=64,
                    max_context=8000,
                )
            )
        else:
            print(f"skipping the Azure trace: {args.azure_trace} not found", file=sys.stderr)
    unknown = chosen - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    for workload in workloads:
        workload.description += f" ({workload.count()} requests"
        workload.description += ", --quick: half length)" if args.quick else ")"
    return workloads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument(
        "--kv-cache-tokens", type=int, default=131072, help="each engine's KV budget"
    )
    parser.add_argument("--shared-prefix-rate", type=float, default=16.0, help="requests/s")
    parser.add_argument("--quick", action="store_true", help="half-length workloads")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--only", default="", help="comma-separated target names to run")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="write routing.* keeping the earlier rows of its .json for the target/workload "
        "pairs not rerun (without it, a partial run writes routing-partial.*)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: write the .md and .png again from the folder's routing.json",
    )
    parser.add_argument("--tools-venv", type=Path, default=Path("/tmp/bench-venv"))
    parser.add_argument(
        "--azure-trace",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "AzureLLMInferenceTrace_conv.csv",
    )
    args = parser.parse_args()
    if args.render_only:
        rows, meta = earlier_results(args.results / "routing.json", new_meta(Fleet(0, 0)))
        write_results(rows, meta, args.results, "routing")
        print(f"results: {args.results / 'routing'}.md")
        return
    only = {name for name in args.only.split(",") if name}
    fleet = Fleet(args.engines, args.kv_cache_tokens)
    workloads = build_workloads(args)

    targets: list[str] = [f"ours-{s}" for s in OUR_STRATEGIES]
    if (args.tools_venv / "bin" / "vllm-router").exists():
        targets += [f"vllm-router-{p}" for p in VLLM_ROUTER_POLICIES]
    else:
        print(f"vllm-router not in {args.tools_venv}: skipped", file=sys.stderr)
    if shutil.which("nginx"):
        targets.append("nginx-round_robin")
    unknown = only - set(targets)
    if unknown:
        raise SystemExit(f"unknown or unavailable targets: {', '.join(sorted(unknown))}")
    targets = [t for t in targets if not only or t in only]

    name = results_name(args, only, workloads)
    earlier, meta = [], new_meta(fleet)
    if args.merge:
        earlier, meta = earlier_results(args.results / "routing.json", meta)
    for workload in workloads:
        meta["workloads"][workload.name] = workload.description
        meta["runs"][workload.name] = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "commit": code_state(),
        }

    workdir = Path(tempfile.mkdtemp(prefix="inventiv-bench-routing-"))
    stack = RoutingStack(workdir)
    rows: list[Row] = []
    try:
        stack.start(free_port())  # the seeded instance is replaced per target
        for workload in workloads:
            loads: list[float] = []
            for target in targets:
                rows.append(run_target(target, workload, stack, fleet, args, workdir))
                row = rows[-1]
                print(
                    f"{workload.name:18} {target:32} p50 {fmt_s(row.ttft_p50_s)} "
                    f"p90 {fmt_s(row.ttft_p90_s)} p99 {fmt_s(row.ttft_p99_s)} "
                    f"tok/s {fmt(row.output_tokens_per_s, 0)} hit {fmt(row.engine_hit_rate)} "
                    f"per-engine {row.requests_per_engine} errors {row.errors} {row.note}",
                    flush=True,
                )
                loads.append(os.getloadavg()[0])
                meta["runs"][workload.name]["load"] = f"{min(loads):.1f}-{max(loads):.1f}"
                write_results(merged(earlier, rows), meta, args.results, name)
    finally:
        stack.stop()
    print(f"results: {args.results / name}.md")
    for line in goal_lines(merged(earlier, rows)):
        print(line)


def results_name(args: argparse.Namespace, only: set[str], workloads: list[Workload]) -> str:
    """routing.*, unless a partial run (some targets, --quick, fewer workloads) without --merge:
    that one must not replace the full results, so routing-partial.*."""
    partial = bool(only) or args.quick or len(workloads) < len(WORKLOADS)
    return "routing-partial" if partial and not args.merge else "routing"


def new_meta(fleet: Fleet) -> dict[str, Any]:
    """A fleet of no engines (--render-only) describes none: the earlier file's is kept."""
    return {
        "fleet": f"{fleet.engines} simulated engines, {fleet.kv_cache_tokens}-token KV cache "
        f"each ({fleet.block_size}-token blocks), prefix caching on"
        if fleet.engines
        else "",
        "workloads": {},
        "runs": {},
    }


def earlier_results(path: Path, meta: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """The rows and workload descriptions of an earlier routing.json; each workload keeps the
    date and machine it was measured at (a file from before per-workload runs: the file's)."""
    if not path.is_file():
        return [], meta
    previous = json.loads(path.read_text())
    before = previous["meta"]
    if meta["fleet"] and before.get("fleet", meta["fleet"]) != meta["fleet"]:
        raise SystemExit(f"--merge: {path} measured another fleet ({before['fleet']})")
    runs = dict(before.get("runs", {}))
    for workload in before["workloads"]:
        if workload not in runs and "when" in before:
            runs[workload] = {"when": before["when"], "machine": before.get("machine", "")}
    rows = [Row(**r) for r in previous["rows"]]
    fleet = meta["fleet"] or before.get("fleet", "")
    return rows, {**meta, "fleet": fleet, "workloads": dict(before["workloads"]), "runs": runs}


def code_state() -> str:
    """The commit measured, and the files changed since in what the benchmark runs."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "core",
             "agent/sim", "bench/routing", "bench/gateway"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return ""
    files = [line[3:] for line in changed if line.strip()]
    return head + (f" with changes to {', '.join(files)}" if files else "")


def merged(earlier: list[Row], rows: list[Row]) -> list[Row]:
    """This run's rows, and the earlier run's for target/workload pairs this run did not do."""
    done = {(r.target, r.workload) for r in rows}
    return [r for r in earlier if (r.target, r.workload) not in done] + rows


def write_results(rows: list[Row], meta: dict[str, Any], folder: Path, name: str) -> None:
    """After every target, so an interrupted run keeps what it measured."""
    order = list(meta["workloads"])
    rows = sorted(rows, key=lambda r: order.index(r.workload) if r.workload in order else 99)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    (folder / f"{name}.md").write_text(render_markdown(rows, meta))
    plot(rows, folder / f"{name}.png")


def run_target(
    target: str, workload: Workload, stack: RoutingStack, fleet: Fleet,
    args: argparse.Namespace, workdir: Path,
) -> Row:  # fmt: skip
    engines, procs = fleet.start(workdir)
    try:
        for url, proc in zip(engines, procs, strict=True):
            asyncio.run(wait_http(url + "/v1/models", 60, proc))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        key: str | None = None
        if target.startswith("ours-"):
            stack.register(engines, target.removeprefix("ours-"))
            proc = start_ours(stack, port, fleet)
            key = stack.key
        elif target.startswith("vllm-router-"):
            policy = target.removeprefix("vllm-router-")
            proc = start_vllm_router(args.tools_venv, port, engines, policy, workdir)
        else:
            servers = " ".join(f"server {u.removeprefix('http://')};" for u in engines)
            name = f"rr-{port}"
            proc = start_nginx(
                workdir, name, NGINX_ROUND_ROBIN.format(servers=servers, port=port), workers=1
            )
        procs.append(proc)
        try:
            asyncio.run(wait_http(url + "/health", 60, proc))
            if target.startswith("ours-"):
                asyncio.run(wait_ready(url, key, len(engines)))
        except (RuntimeError, TimeoutError) as exc:
            return Row(target, workload.name, note=f"did not start: {exc}")
        return measure(target, url, key, engines, workload)
    finally:
        for proc in procs:
            stop(proc)


async def wait_ready(url: str, key: str | None, engines: int) -> None:
    """Our gateway serves the model once it has read the registry."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=5, headers=headers) as client:
        for _ in range(100):
            response = await client.get(url + "/v1/models")
            if response.status_code == 200 and response.json().get("data"):
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the gateway never listed the model")


def goal_lines(rows: list[Row]) -> list[str]:
    """Issue 16's routing goals against these rows, met or not, with the figures."""

    def row(target: str, workload: str) -> Row | None:
        found = next((r for r in rows if r.target == target and r.workload == workload), None)
        return found if found and found.ttft_p90_s and found.output_tokens_per_s else None

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    lines = []
    prefix, least = (
        row("ours-prefix_aware", "shared_prefix"),
        row("ours-least_load", "shared_prefix"),
    )
    if prefix and least:
        assert prefix.ttft_p90_s and least.ttft_p90_s
        ratio = least.ttft_p90_s / prefix.ttft_p90_s
        lines.append(
            f"shared_prefix, p90 TTFT at least 5x lower than least_load: "
            f"{least.ttft_p90_s:.2f} s / {prefix.ttft_p90_s:.2f} s = {ratio:.1f}x, "
            f"{verdict(ratio >= 5)}"
        )
        peers = [
            r
            for r in rows
            if r.workload == "shared_prefix"
            and r.target.startswith("vllm-router-")
            and r.ttft_p90_s is not None
        ]
        if peers:
            best = min(peers, key=lambda r: r.ttft_p90_s or 0.0)
            assert best.ttft_p90_s
            lines.append(
                f"shared_prefix, p90 TTFT lower than every vllm-router mode ({len(peers)} "
                f"measured): best {best.target} {best.ttft_p90_s:.2f} s against "
                f"{prefix.ttft_p90_s:.2f} s ({best.ttft_p90_s / prefix.ttft_p90_s:.1f}x), "
                f"{verdict(all((r.ttft_p90_s or 0) > prefix.ttft_p90_s for r in peers))}"
            )
        others = [least, *(r for r in peers if r.output_tokens_per_s)]
        top = max(others, key=lambda r: r.output_tokens_per_s or 0.0)
        assert prefix.output_tokens_per_s and top.output_tokens_per_s
        lines.append(
            f"shared_prefix, at equal or better output tokens/s: {prefix.output_tokens_per_s:.0f} "
            f"against at most {top.output_tokens_per_s:.0f} ({top.target}), "
            f"{verdict(prefix.output_tokens_per_s >= top.output_tokens_per_s)}"
        )
    for workload, goal in (("azure_conv_trace", True), ("conversations", False)):
        prefix, least = row("ours-prefix_aware", workload), row("ours-least_load", workload)
        if not (prefix and least):
            continue
        ratios = {
            "p50": (prefix.ttft_p50_s or 0) / (least.ttft_p50_s or 1),
            "p90": (prefix.ttft_p90_s or 0) / (least.ttft_p90_s or 1),
            "p99": (prefix.ttft_p99_s or 0) / (least.ttft_p99_s or 1),
        }
        throughput = (prefix.output_tokens_per_s or 0) / (least.output_tokens_per_s or 1)
        figures = (
            f"prefix_aware / least_load TTFT p50 {prefix.ttft_p50_s:.3f} / "
            f"{least.ttft_p50_s:.3f} s = {ratios['p50']:.3f}, p90 {prefix.ttft_p90_s:.3f} / "
            f"{least.ttft_p90_s:.3f} s = {ratios['p90']:.3f}, p99 {ratios['p99']:.3f}, "
            f"output tok/s {throughput:.3f}"
        )
        if goal:
            met = ratios["p50"] <= 1.05 and ratios["p90"] <= 1.05 and throughput >= 0.95
            lines.append(
                f"{workload}, within 5 % of least_load (TTFT p50 and p90 at most 1.05x, "
                f"output tok/s at least 0.95x): {figures}, {verdict(met)}"
            )
        else:
            lines.append(f"{workload} (no goal): {figures}")
    return lines


if __name__ == "__main__":
    main()
