"""Live run: a slice of a trace through the real stack, side by side with the offline replay.

    python -m bench.autoscale.live --trace ../shared/data/AzureLLMInferenceTrace_conv.csv \\
        --out bench/results/autoscale-live.json [--start-min 0] [--minutes 8] [--compress 2] \\
        [--slowdown 2] [--boot-s 15] [--interval-s 5] [--window-s 20] [--mode capacity-down] \\
        [--plot FILE.png]

The slice's requests go, at their (compressed) arrival times, as streamed completions (prompt
and output tokens as in the trace) through the real gateway to instances the real
AutoscalerWorkflow orders from the local provider: node agents supervising the simulator.
Everything runs here: embedded PostgreSQL, Redis and Temporal, the worker, the API (the agents'
heartbeats) and the gateway as processes, as `make dev` runs them.

Both sides describe the same instance: the simulator gets the offline model's timings as flags
(`--slowdown K` multiplies the step timings of both, so the trace's own rate needs several
instances while the machine running this keeps up with the streams), prefix caching off (the
model has none), a context long enough for every request; the policy is the mode's
`AutoscalingConfig` from the same calibration as `bench.autoscale.run`, with the round, window
and delays given here (short, to fit minutes). The offline replay of the same slice uses the
same policy and round, and the boot time the live instances took (median, order to ready).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.autoscale.model import InstanceModel, Request
from bench.autoscale.policies import Inventiv
from bench.autoscale.replay import Outcome, Replay, ReplaySettings, load_trace, percentile
from bench.autoscale.run import calibrate, our_modes
from core.autoscaling import AutoscalingConfig

MODEL = "trace-llm"
PROMPT = "x " * 20_000  # one simulator token per "x"
COUNTED = ("provisioning", "booting", "ready")


# ----------------------------------------------------------------------------- the slice


def trace_slice(path: str, start_min: float, minutes: float, compress: float) -> list[Request]:
    """The trace's requests from `start_min` for `minutes` (trace time), from 0, compressed."""
    start, end = start_min * 60 / compress, (start_min + minutes) * 60 / compress
    return [
        replace(r, arrival=r.arrival - start)
        for r in load_trace(path, compress)
        if start <= r.arrival < end
    ]


def instance_model(slowdown: float) -> InstanceModel:
    base = InstanceModel()
    return replace(
        base,
        prefill_overhead_s=base.prefill_overhead_s * slowdown,
        prefill_per_token_s=base.prefill_per_token_s * slowdown,
        inter_token_latency_s=base.inter_token_latency_s * slowdown,
    )


def engine_args(model: InstanceModel, boot_s: float) -> dict[str, Any]:
    """The simulator's flags for the same instance as `model`."""
    return {
        "prefill-overhead-s": model.prefill_overhead_s,
        "prefill-per-token-s": model.prefill_per_token_s,
        "inter-token-latency-s": model.inter_token_latency_s,
        "decode-slowdown-per-seq": model.decode_slowdown_per_seq,
        "max-num-seqs": model.max_num_seqs,
        "max-num-batched-tokens": model.max_num_batched_tokens,
        "kv-cache-tokens": model.kv_cache_tokens,
        "max-model-len": 32768,
        "enable-prefix-caching": False,
        "model-load-delay-s": boot_s,
    }


@dataclass(frozen=True)
class LiveSettings:
    slo_ttft_s: float
    boot_s: float  # the simulator's model load; the live boot adds the agent's start
    interval_s: float
    min_instances: int
    max_instances: int
    compress: float
    slowdown: float
    mode: str


# ----------------------------------------------------------------------------- the client


@dataclass
class Sent:
    req: Request
    sent: float = math.nan  # seconds from the start, as the other times
    first_token: float = math.nan
    done: float = math.nan
    status: int = 0
    error: str | None = None

    @property
    def served(self) -> bool:
        return self.status == 200 and self.error is None and not math.isnan(self.first_token)


class _Response:
    """httptools callbacks: the time of the first SSE event, errors in the stream, the end."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.first: float | None = None
        self.error = False
        self.complete = False

    def on_body(self, body: bytes) -> None:
        if self.first is None and b"data:" in body:
            self.first = time.monotonic() - self.t0
        if b'"error"' in body:
            self.error = True

    def on_message_complete(self) -> None:
        self.complete = True


async def send(host: str, port: int, key: str, t0: float, s: Sent) -> None:
    import httptools

    body = json.dumps(
        {
            "model": MODEL,
            "prompt": PROMPT[: 2 * s.req.prompt - 1],
            "max_tokens": s.req.output,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    state = _Response(t0)
    parser = httptools.HttpResponseParser(state)
    s.sent = time.monotonic() - t0
    try:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head + body)
            while not state.complete:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
        finally:
            writer.close()
        s.status = parser.get_status_code()
        if s.status != 200:
            s.error = f"HTTP {s.status}"
        elif state.error or not state.complete:
            s.error = "error event" if state.error else "stream cut"
    except (OSError, httptools.HttpParserError) as exc:
        s.error = type(exc).__name__
    if state.first is not None and s.status == 200:
        s.first_token = state.first
    s.done = time.monotonic() - t0


# ----------------------------------------------------------------------------- the stack


class Stack:
    """Embedded servers and the platform's processes, as `make dev` runs them."""

    def __init__(self, data_dir: Path, interval_s: float) -> None:
        from core.embedded import free_port

        env = {
            "INVENTIV_HOST": "127.0.0.1",
            "INVENTIV_API_PORT": str(free_port()),
            "INVENTIV_GATEWAY_PORT": str(free_port()),
            "INVENTIV_TEMPORAL_PORT": str(free_port()),
            "INVENTIV_TEMPORAL_UI_PORT": str(free_port()),
            "INVENTIV_DATA_DIR": str(data_dir),
            "INVENTIV_AUTOSCALE_INTERVAL_S": str(interval_s),
            "INVENTIV_BOOT_POLL_INTERVAL_S": "0.2",
            "INVENTIV_HEALTH_INTERVAL_S": "2",
            "INVENTIV_DRAIN_TIMEOUT_S": "120",
            "INVENTIV_GATEWAY_LOAD_PUBLISH_S": "0.5",
            # The trace is a service's many users; one key here sends it all, so the gateway's
            # cap of 256 in flight per key (429 beyond) would refuse what the model queues.
            "INVENTIV_GATEWAY_MAX_CONCURRENT_PER_KEY": "0",
            "INVENTIV_AGENT_HEARTBEAT_INTERVAL_S": "1",
        }
        for name in ("INVENTIV_DATABASE_URL", "INVENTIV_REDIS_URL", "INVENTIV_TEMPORAL_ADDRESS"):
            os.environ.pop(name, None)
        os.environ.update(env)
        from core.settings import Settings
        from inventiv.dev import DevStack

        self.dev = DevStack(Settings())
        self.settings = self.dev.settings

    def start(self) -> None:
        from core.embedded import wait_for_port
        from core.migrate import upgrade

        self.settings = self.dev.start_servers()
        upgrade(self.settings.require("database_url"))
        s = self.settings
        self.dev.spawn("worker", ["-m", "inventiv", "worker"])
        self.dev.spawn("api", ["-m", "inventiv", "api"])
        self.dev.spawn("gateway", ["-m", "gateway"])
        for name, port in (("api", s.api_port), ("gateway", s.gateway_port)):
            wait_for_port(s.host, port, 120, dict(self.dev.children)[name])

    def stop(self) -> None:
        self.dev.stop()

    def cpu_seconds(self) -> dict[str, dict[int, float]]:
        """CPU time so far of each process, by part: the platform's processes, the machines'
        agents and simulators, this load generator."""
        import psutil

        groups: dict[str, dict[int, float]] = {"load generator": {}, "agents": {}, "simulators": {}}
        pids = {name: proc.pid for name, proc in self.dev.children}
        procs = [(name, psutil.Process(pid)) for name, pid in pids.items()]
        procs.append(("load generator", psutil.Process()))
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("INVENTIV_AGENT_INSTANCE_ID"):
                    sim = any("agent.sim" in part for part in proc.cmdline())
                    procs.append(("simulators" if sim else "agents", proc))
        for name, proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                groups.setdefault(name, {})[proc.pid] = times.user + times.system
        return groups


async def seed(settings: Any, live: LiveSettings, config: AutoscalingConfig, model: InstanceModel):  # type: ignore[no-untyped-def]
    """Project, local provider and instance type, the deployment with autoscaling on, a key."""
    from activities.providers.local.catalogue import LOCAL_INSTANCE_TYPE
    from api.security import new_api_key
    from core.db import make_engine, make_sessionmaker
    from core.models import ApiKey, Deployment, InstanceType, Project, Provider
    from core.wire import RoutingStrategy

    engine = make_engine(settings.require("database_url"), pool_size=2)
    maker = make_sessionmaker(engine)
    async with maker() as session:
        project = Project(name="autoscale-live")
        provider = Provider(name="local", kind="local", config={})
        session.add_all([project, provider])
        await session.flush()
        itype = InstanceType(
            provider_id=provider.id,
            name=LOCAL_INSTANCE_TYPE,
            gpu_model="sim",
            gpu_count=model.gpu_count,
            gpu_memory_gb=80,
            price_per_hour=1.0,
        )
        session.add(itype)
        await session.flush()
        deployment = Deployment(
            project_id=project.id,
            name="autoscale-live",
            model=MODEL,
            served_name=MODEL,
            provider_id=provider.id,
            instance_type_id=itype.id,
            min_instances=live.min_instances,
            max_instances=live.max_instances,
            autoscaling_enabled=True,
            autoscaling=config.model_dump(),
            engine_args=engine_args(model, live.boot_s),
            boot_timeout_s=120,
            routing=RoutingStrategy.least_load,
        )
        secret, prefix, key_hash = new_api_key()
        session.add_all(
            [
                deployment,
                ApiKey(project_id=project.id, name="live", prefix=prefix, key_hash=key_hash),
            ]
        )
        await session.commit()
        dep_id = deployment.id
    return engine, maker, dep_id, secret


async def fleet(maker, dep_id: uuid.UUID) -> list[Any]:  # type: ignore[no-untyped-def]
    from sqlmodel import select

    from core.models import Instance

    async with maker() as session:
        return list(
            (await session.exec(select(Instance).where(Instance.deployment_id == dep_id))).all()
        )


# ----------------------------------------------------------------------------- the live run


@dataclass
class LiveResult:
    sent: list[Sent]
    end: float  # the last completion or arrival, from the start
    instances: list[dict[str, Any]]  # ordered/ready/draining/terminated, from the start
    decisions: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    load: list[float] = field(default_factory=list)  # the machine's 1-minute load average
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by part, during the run


async def run_live(
    stack: Stack,
    requests: list[Request],
    live: LiveSettings,
    config: AutoscalingConfig,
    model: InstanceModel,
) -> LiveResult:
    from sqlmodel import col, select

    from core.models import InstanceStateHistory, ScalingDecision
    from workflows.client import ensure_autoscaler

    data_dir = stack.settings.data_dir
    db = None
    try:
        from temporalio.client import Client

        settings = stack.settings
        db, maker, dep_id, key = await seed(settings, live, config, model)
        client = await Client.connect(settings.require("temporal_address"))
        await ensure_autoscaler(client, settings.task_queue, dep_id, live.interval_s)
        deadline = time.monotonic() + 180
        while sum(i.state == "ready" for i in await fleet(maker, dep_id)) < live.min_instances:
            if time.monotonic() > deadline:
                raise SystemExit(f"no instance ready in 180 s; see {data_dir / 'logs'}")
            await asyncio.sleep(0.5)
        print(f"{live.min_instances} instance(s) ready; replaying {len(requests)} requests")

        cpu_before = stack.cpu_seconds()
        t0 = time.monotonic()
        wall0 = time.time()
        sent = [Sent(r) for r in requests]
        timeline: list[dict[str, Any]] = []
        load: list[float] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                now = time.monotonic() - t0
                states = [i.state for i in await fleet(maker, dep_id)]
                timeline.append(
                    {
                        "t": round(now, 2),
                        "instances": sum(s in COUNTED for s in states),
                        "ready": states.count("ready"),
                        "draining": states.count("draining"),
                        "in_flight": sum(
                            1 for s in sent if not math.isnan(s.sent) and math.isnan(s.done)
                        ),
                    }
                )
                load.append(os.getloadavg()[0])
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), 1.0)

        watcher = asyncio.create_task(watch())
        tasks = []
        for s in sent:
            await asyncio.sleep(max(0.0, t0 + s.req.arrival - time.monotonic()))
            tasks.append(
                asyncio.create_task(send(settings.host, settings.gateway_port, key, t0, s))
            )
        await asyncio.wait(tasks, timeout=300)
        end = max([s.done for s in sent if not math.isnan(s.done)] + [requests[-1].arrival])
        cpu_after = stack.cpu_seconds()
        done.set()
        await watcher
        cpu = {
            name: round(
                sum(t - cpu_before.get(name, {}).get(pid, 0.0) for pid, t in after.items()), 1
            )
            for name, after in cpu_after.items()
        }

        instances = []
        async with maker() as session:
            history = (
                await session.exec(
                    select(InstanceStateHistory).where(
                        col(InstanceStateHistory.to_state) == "draining"
                    )
                )
            ).all()
            rows = (
                await session.exec(
                    select(ScalingDecision)
                    .where(ScalingDecision.deployment_id == dep_id)
                    .order_by(col(ScalingDecision.at))
                )
            ).all()
        drained = {h.instance_id: h.at for h in history}

        def rel(at: datetime | None) -> float | None:
            return None if at is None else round(at.timestamp() - wall0, 3)

        for inst in await fleet(maker, dep_id):
            instances.append(
                {
                    "id": str(inst.id),
                    "ordered": rel(inst.created_at),
                    "ready": rel(inst.ready_at),
                    "draining": rel(drained.get(inst.id)),
                    "terminated": rel(inst.terminated_at),
                    "state": str(inst.state),
                }
            )
        decisions = [
            {"t": rel(d.at), "action": d.action, "delta": d.delta, "reason": d.reason}
            for d in rows
            if d.action in ("scale_up", "scale_down")
        ]
        return LiveResult(sent, end, instances, decisions, timeline, load, cpu)
    finally:
        if db is not None:
            await db.dispose()


# ----------------------------------------------------------------------------- figures


def live_figures(result: LiveResult, slo_ttft_s: float) -> dict[str, Any]:
    sent = result.sent
    served = [s for s in sent if s.served]
    ttfts = [s.first_token - s.sent for s in served]
    seconds = 0.0
    for inst in result.instances:
        start = max(0.0, inst["ordered"])
        stop = inst["terminated"] if inst["terminated"] is not None else result.end
        seconds += max(0.0, min(stop, result.end) - start)
    boots = [i["ready"] - i["ordered"] for i in result.instances if i["ready"] is not None]
    lags = [s.sent - s.req.arrival for s in sent]
    errors: dict[str, int] = {}
    for s in sent:
        if not s.served:
            why = s.error or f"HTTP {s.status}"
            errors[why] = errors.get(why, 0) + 1
    return {
        "gpu_seconds": round(seconds, 1),
        "slo_attainment": round(sum(t <= slo_ttft_s for t in ttfts) / len(sent), 4),
        "ttft_p50_s": round(percentile(ttfts, 0.5), 3),
        "ttft_p99_s": round(percentile(ttfts, 0.99), 3),
        "refused": len(sent) - len(served),
        "scale_actions": sum(1 for d in result.decisions if d["t"] is not None and d["t"] >= 0),
        **_count_figures(live_intervals(result), result.end),
        "end_s": round(result.end, 1),
        "boot_s_median": round(statistics.median(boots), 2) if boots else None,
        "send_lag_p99_s": round(percentile(lags, 0.99), 3),
        "errors": errors,
        "machine_load_avg_1m": round(statistics.mean(result.load), 2) if result.load else None,
        "cpu_s": result.cpu_s,
    }


def counts(intervals: list[tuple[float, float | None]], end: float) -> list[tuple[float, int]]:
    """Instances ordered and not draining, each second from 0 to `end`: (t, count)."""
    return [
        (float(t), sum(1 for a, b in intervals if a <= t and (b is None or t < b)))
        for t in range(int(end) + 1)
    ]


def _count_figures(intervals: list[tuple[float, float | None]], end: float) -> dict[str, Any]:
    points = counts(intervals, end)
    return {
        "mean_instances": round(statistics.mean(n for _, n in points), 2) if points else 0.0,
        "peak_instances": max((n for _, n in points), default=0),
    }


def live_intervals(result: LiveResult) -> list[tuple[float, float | None]]:
    out = []
    for i in result.instances:
        stop = i["draining"] if i["draining"] is not None else i["terminated"]
        out.append((max(0.0, i["ordered"]), stop))
    return out


def offline_intervals(replay: Replay) -> list[tuple[float, float | None]]:
    return [
        (e.ordered_at, e.draining_at if e.draining_at is not None else e.terminated_at)
        for e in replay.engines
    ]


def offline_figures(outcome: Outcome, replay: Replay) -> dict[str, Any]:
    end = max(
        [f.done for f in replay.flights if not math.isnan(f.done)] + [replay.requests[-1].arrival]
    )
    return {
        "gpu_seconds": round(outcome.gpu_hours * 3600, 1),
        "slo_attainment": round(outcome.slo_attainment, 4),
        "ttft_p50_s": round(outcome.ttft_p50_s, 3),
        "ttft_p99_s": round(outcome.ttft_p99_s, 3),
        "refused": outcome.refused,
        "scale_actions": outcome.scale_actions,
        **_count_figures(offline_intervals(replay), end),
        "end_s": round(end, 1),
    }


REQUEST_COLUMNS = [
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "live_ttft_s",
    "live_done_s",
    "offline_ttft_s",
    "offline_done_s",
]


def per_request(result: LiveResult, replay: Replay, slo_ttft_s: float) -> dict[str, Any]:
    """How closely the model predicts each request: TTFT and end-to-end time, live against
    offline, for the requests both served; and how often both put it on the same side of the
    SLO."""
    ttft, e2e, same = [], [], 0
    for s, f in zip(result.sent, replay.flights, strict=True):
        live_ok = s.served and s.first_token - s.sent <= slo_ttft_s
        off_ok = not f.refused and f.first_token - f.req.arrival <= slo_ttft_s
        same += live_ok == off_ok
        if s.served and not f.refused:
            ttft.append((s.first_token - s.sent) - (f.first_token - f.req.arrival))
            e2e.append((s.done - s.sent) / max(1e-9, f.done - f.req.arrival))
    return {
        "ttft_live_minus_offline_s": {
            "p10": round(percentile(ttft, 0.1), 3),
            "p50": round(percentile(ttft, 0.5), 3),
            "p90": round(percentile(ttft, 0.9), 3),
        },
        "e2e_live_over_offline": {
            "p10": round(percentile(e2e, 0.1), 3),
            "p50": round(percentile(e2e, 0.5), 3),
            "p90": round(percentile(e2e, 0.9), 3),
        },
        "same_side_of_slo": round(same / len(result.sent), 4) if result.sent else None,
    }


def orders(starts: list[float]) -> list[list[float]]:
    """[time, instances ordered] per scale-up (orders within 2 s are one action)."""
    out: list[list[float]] = []
    for t in sorted(starts):
        if out and t - out[-1][0] < 2:
            out[-1][1] += 1
        else:
            out.append([round(t, 1), 1])
    return out


def run_offline(
    requests: list[Request],
    live: LiveSettings,
    config: AutoscalingConfig,
    model: InstanceModel,
    boot_s: float,
) -> tuple[Outcome, Replay]:
    settings = ReplaySettings(
        slo_ttft_s=live.slo_ttft_s,
        boot_s=boot_s,
        interval_s=live.interval_s,
        min_instances=live.min_instances,
        max_instances=live.max_instances,
    )
    policy = Inventiv(config, live.min_instances, live.max_instances)
    replay = Replay(requests, policy, settings, model, initial_instances=live.min_instances)
    return replay.run(), replay


def side_by_side(report: dict[str, Any]) -> str:
    live, offline = report["live"]["figures"], report["offline"]["figures"]
    rows = [
        "| | GPU-seconds | mean instances | peak | within SLO | TTFT p50 s | TTFT p99 s "
        "| refused | scale actions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in (("live", live), ("offline model", offline)):
        rows.append(
            f"| {name} | {f['gpu_seconds']:.0f} | {f['mean_instances']:.2f} "
            f"| {f['peak_instances']} | {f['slo_attainment']:.1%} | {f['ttft_p50_s']:.2f} "
            f"| {f['ttft_p99_s']:.2f} | {f['refused']} | {f['scale_actions']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.autoscale.live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trace", required=True)
    parser.add_argument("--out", default="bench/results/autoscale-live.json")
    parser.add_argument("--start-min", type=float, default=0.0, help="slice start, trace minutes")
    parser.add_argument("--minutes", type=float, default=8.0, help="slice length, trace minutes")
    parser.add_argument("--compress", type=float, default=2.0, help="divide arrival times by N")
    parser.add_argument(
        "--slowdown", type=float, default=2.0, help="multiply the instance's step timings by K"
    )
    parser.add_argument("--boot-s", type=float, default=15.0, help="the simulator's model load")
    parser.add_argument("--slo-ttft-s", type=float, default=2.0)
    parser.add_argument("--interval-s", type=float, default=5.0, help="autoscaler round")
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--scale-up-delay-s", type=float, default=10.0)
    parser.add_argument(
        "--scale-down-delay-s", type=float, default=60.0, help="the down delay (target modes too)"
    )
    parser.add_argument("--mode", default="capacity-down", help="one of bench.autoscale.run's")
    parser.add_argument("--min-instances", type=int, default=1)
    parser.add_argument("--max-instances", type=int, default=8)
    parser.add_argument("--plot", help="PNG of load and instances, live and offline")
    args = parser.parse_args(argv)
    live = LiveSettings(
        slo_ttft_s=args.slo_ttft_s,
        boot_s=args.boot_s,
        interval_s=args.interval_s,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        compress=args.compress,
        slowdown=args.slowdown,
        mode=args.mode,
    )
    requests = trace_slice(args.trace, args.start_min, args.minutes, args.compress)
    model = instance_model(args.slowdown)
    capacity = calibrate(requests, ReplaySettings(slo_ttft_s=args.slo_ttft_s), model)
    modes = our_modes(
        capacity, ReplaySettings(slo_ttft_s=args.slo_ttft_s, boot_s=args.boot_s), model
    )
    if args.mode not in modes:
        parser.error(f"--mode: one of {', '.join(modes)}")
    config = modes[args.mode].model_copy(
        update={
            "window_s": args.window_s,
            "scale_up_delay_s": args.scale_up_delay_s,
            "scale_down_delay_s": args.scale_down_delay_s,
            "target_down_delay_s": args.scale_down_delay_s,
        }
    )
    config = AutoscalingConfig.model_validate(config.model_dump())
    print(f"capacity {capacity}; policy {config.model_dump()}", flush=True)

    stack = Stack(Path(tempfile.mkdtemp(prefix="inventiv-live-")), live.interval_s)
    print(f"stack in {stack.settings.data_dir} (logs under it)", flush=True)
    finished = False
    try:
        stack.start()
        result = asyncio.run(run_live(stack, requests, live, config, model))
        finished = True
    finally:
        stack.stop()
        if finished:
            shutil.rmtree(stack.settings.data_dir, ignore_errors=True)
        else:
            print(f"failed; the stack's data and logs stay in {stack.settings.data_dir}")
    live_f = live_figures(result, args.slo_ttft_s)
    boot = live_f["boot_s_median"] if live_f["boot_s_median"] is not None else args.boot_s
    outcome, replay = run_offline(requests, live, config, model, boot)
    report = {
        "trace": args.trace,
        "slice": {
            "start_min": args.start_min,
            "minutes": args.minutes,
            "compress": args.compress,
            "requests": len(requests),
            "wall_s": round(requests[-1].arrival, 1) if requests else 0,
        },
        "settings": {
            **asdict(live),
            "instance_model": {
                k: v for k, v in asdict(model).items() if not k.startswith("max_inflight")
            },
            "engine_args": engine_args(model, args.boot_s),
            "capacity_rps_per_instance": capacity.rps,
            "policy": config.model_dump(),
            "offline_boot_s": boot,
        },
        "orders": {
            "live": orders([i["ordered"] for i in result.instances if i["ordered"] >= 0]),
            "offline": orders([e.ordered_at for e in replay.engines if e.ordered_at > 0]),
        },
        "drains": {
            "live": sorted(round(i["draining"], 1) for i in result.instances if i["draining"]),
            "offline": sorted(round(e.draining_at, 1) for e in replay.engines if e.draining_at),
        },
        "live": {
            "figures": live_f,
            "instances": result.instances,
            "decisions": result.decisions,
            "timeline": result.timeline,
        },
        "offline": {
            "figures": offline_figures(outcome, replay),
            "engines": [
                {
                    "ordered": round(e.ordered_at, 3),
                    "ready": round(e.ready_at, 3),
                    "draining": e.draining_at,
                    "terminated": e.terminated_at,
                }
                for e in replay.engines
            ],
        },
        "instances_each_second": {
            "live": [n for _, n in counts(live_intervals(result), result.end)],
            "offline": [n for _, n in counts(offline_intervals(replay), result.end)],
        },
        "per_request": per_request(result, replay, args.slo_ttft_s),
        "requests": {
            "columns": REQUEST_COLUMNS,
            "rows": [
                [
                    round(s.req.arrival, 3),
                    s.req.prompt,
                    s.req.output,
                    None if not s.served else round(s.first_token - s.sent, 3),
                    None if math.isnan(s.done) else round(s.done, 3),
                    None if math.isnan(f.first_token) else round(f.first_token - f.req.arrival, 3),
                    None if math.isnan(f.done) else round(f.done, 3),
                ]
                for s, f in zip(result.sent, replay.flights, strict=True)
            ],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        rows = report["requests"].pop("rows")
        text = json.dumps(report, indent=1)
        # one line per request, not one per figure
        listed = ",\n  ".join(json.dumps(row) for row in rows)
        f.write(text[:-2] + ',\n "request_rows": [\n  ' + listed + "\n ]\n}\n")
    print(side_by_side(report))
    if args.plot:
        report["request_rows"] = rows
        plot(args.plot, report)


def plot(path: str, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load, count, ttft) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    arrivals = [r[0] for r in report["request_rows"]]
    step = report["settings"]["interval_s"]
    edges = [k * step for k in range(int(max(arrivals) // step) + 2)]
    load.step(
        edges[:-1],
        [sum(a <= x < a + step for x in arrivals) / step for a in edges[:-1]],
        where="post",
        color="grey",
    )
    load.set_ylabel("arrivals / s")
    each = report["instances_each_second"]
    count.step(range(len(each["live"])), each["live"], where="post", label="live")
    count.step(
        range(len(each["offline"])),
        each["offline"],
        where="post",
        label="offline model",
        linestyle="--",
    )
    count.set_ylabel("instances (ordered, not draining)")
    count.legend()
    rows = report["request_rows"]
    for column, name, style in ((3, "live", "-"), (5, "offline model", "--")):
        medians = []
        for a in edges[:-1]:
            values = [r[column] for r in rows if a <= r[0] < a + step and r[column] is not None]
            medians.append(statistics.median(values) if values else None)
        ttft.step(edges[:-1], medians, where="post", label=name, linestyle=style)
    ttft.axhline(report["settings"]["slo_ttft_s"], color="red", linestyle=":", label="SLO")
    ttft.set_yscale("log")
    ttft.set_ylabel(f"TTFT p50 of arrivals per {step:.0f} s")
    ttft.set_xlabel("seconds")
    ttft.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
