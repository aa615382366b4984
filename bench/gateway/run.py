"""Gateway benchmark: one run, same machine, same upstream, same load tool (wrk), side by side.

    python -m bench.gateway.run            # both cases, all targets, 10 s per configuration
    python -m bench.gateway.run --quick    # 3 s per configuration
    python -m bench.gateway.run --case many-keys            # one case: one-key or many-keys
    python -m bench.gateway.run --baseline-tree /tmp/gw-baseline --rounds 2   # before/after

Two cases. `one-key`: one API key with limits far above the load (its request slots leased 256
at a time) and one instance: the gateway's best case, with the other targets below. `many-keys`:
10,000 keys (`--keys`) limited to 600 RPM and 60,000 TPM each, wrk sending them in turn (a Lua
script picks the key of each request), so every request is admitted by its own Redis call, and
4 instances (`--instances`, 4 ports of the upstream nginx) the router scores; the targets there
are direct, the gateway and vllm-router over the same 4 upstreams.

`--servers uvicorn,granian` (the default) measures the same ASGI app under other servers in the
one-key case, beside the gateway's own server: uvicorn (httptools, uvloop) through
`INVENTIV_GATEWAY_SERVER=uvicorn`, granian through its command line with
`bench.gateway.asgi_app:create` (granian installed with `pip install --no-deps --target
TOOLS_VENV/servers granian` and put on PYTHONPATH: .venv's interpreter and packages). Then
`bench.gateway.edges` probes the HTTP edge limits of each (`--no-edges` skips it).

`--baseline-tree PATH` measures the gateway of another checkout (`git worktree add PATH COMMIT`)
as an extra target of the same run, `inventiv-gateway xN @COMMIT`: its own PostgreSQL and Redis,
migrated and seeded by that tree's own benchmark code, `python -m gateway` run from that tree with
this interpreter. The run prints the CPU ms per request of this tree's gateway over the baseline's.
`--rounds N` measures the gateway targets N times, alternating this tree and the baseline (in
turn first). `--side-by-side N` adds N rounds where both 1-worker gateways are loaded at the same
time, each by its own wrk: on a shared machine the steadiest before/after ratio.

Targets: the upstream directly; nginx as a reverse proxy (the floor); our gateway with API-key
auth, rate limits (per-key RPM and TPM through Redis), request logs and metrics on, with 1 and 2
worker processes; `vllm-router` (Rust); LiteLLM's proxy (no database). The upstream is nginx
returning a fixed OpenAI chat completion (`/v1/chat/completions`) or a fixed SSE stream
(`/v1/completions`) with no delay, so every figure is the proxy's own cost.

Figures: requests/s at 32 connections; p50/p99 latency at 1 and 32 connections and what each
proxy adds to the direct figure; CPU-ms per request of the proxy's processes (psutil, user+system
over the 32-connection run; the most stable figure on a noisy machine); streaming time to first
SSE event added (sequential requests). Results go to bench/results/gateway.json and .md
(`--results DIR`, `--name NAME` elsewhere).

Tools: wrk and nginx from Debian (`apt-get install -y wrk nginx`); vllm-router and LiteLLM from a
separate virtualenv (`python -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install
vllm-router 'litellm[proxy]'`, or --tools-venv), never the project's. Missing ones are skipped.
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httptools
import psutil

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MODEL = "bench"

# The many-keys case: this many keys, each limited to MANY_KEYS_RPM requests and MANY_KEYS_TPM
# tokens a minute, the load spread evenly over them, routed to this many instances. At the
# benchmark's load (at most ~30,000 req/s here, so ~3 req/s and ~60 tokens/s a key, for ~25 s
# per gateway target) no key comes near its limits: none is refused. But each key sees too few
# requests for the limiter to lease it more than one slot at a time (it leases a quarter of a
# second's worth of a key's rate): every request is admitted by its own Redis call.
MANY_KEYS = 10_000
MANY_KEYS_INSTANCES = 4
MANY_KEYS_RPM = 600
MANY_KEYS_TPM = 60_000

CHAT_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764288000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    },
    separators=(",", ":"),
)


def _sse_chunk(text: str | None, finish: str | None = None, usage: bool = False) -> str:
    choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    chunk = {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1764288000,
        "model": MODEL,
        "choices": [] if usage else [choice],
    }
    if usage:
        chunk["usage"] = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"


SSE_RESPONSE = (
    _sse_chunk("Hello")
    + _sse_chunk(" there")
    + _sse_chunk("!", "stop")
    + _sse_chunk(None, usage=True)
    + "data: [DONE]\n\n"
)
CHAT_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
)
STREAM_BODY = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True})


def _nginx_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


NGINX_COMMON = """
worker_processes {workers};
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  fastcgi_temp_path {dir}/{name}-fcgi;
  uwsgi_temp_path {dir}/{name}-uwsgi;
  scgi_temp_path {dir}/{name}-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  {servers}
}}
"""

UPSTREAM_SERVERS = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/completions {{ default_type text/event-stream; return 200 '{sse}'; }}
    location / {{ default_type application/json; return 200 '{chat}'; }}
  }}
"""


def upstream_servers(ports: list[int]) -> str:
    """The upstream's server blocks: one per port (the many-keys case's instances), same answers."""
    sse, chat = _nginx_quote(SSE_RESPONSE), _nginx_quote(CHAT_RESPONSE)
    return "".join(UPSTREAM_SERVERS.format(port=port, sse=sse, chat=chat) for port in ports)


PROXY_SERVERS = """
  upstream engine {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http(
    url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            try:
                response = await client.get(url)
                if response.status_code < 500:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (alive ones)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


# ----------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx responses plus socket errors


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: float, start: int = 0) -> WrkResult:
    """`start`: where the many-keys script begins in its key list (each wrk run restarts it)."""
    threads = 1 if connections == 1 else 2
    completed = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            str(start),
        ],
        capture_output=True,
        text=True,
    )
    out = completed.stdout
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed: {completed.stdout} {completed.stderr}".strip())
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(connections, requests, seconds, rps, p50, p99, errors)


def wrk_script(directory: Path, key: str) -> Path:
    path = directory / f"post-{uuid.uuid4().hex[:6]}.lua"
    body = CHAT_BODY.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


# One Lua state per wrk thread: each builds every key's request once, then sends them in turn
# (thread n starting n/threads of the way through), so the keys share the load evenly and the
# per-request cost in wrk is a table lookup, as for a fixed request.
KEYS_SCRIPT = """
local threads_set = 0
function setup(thread)
  thread:set("thread_no", threads_set)
  threads_set = threads_set + 1
end
function init(args)
  requests = {{}}
  local headers = {{["Content-Type"] = "application/json"}}
  for key in io.lines("{keys_file}") do
    headers["Authorization"] = "Bearer " .. key
    requests[#requests + 1] = wrk.format("POST", nil, headers, "{body}")
  end
  -- Threads start half the list apart, from where the previous run left off (args[1]).
  local start = tonumber(args[1] or "0")
  index = (start + (thread_no or 0) * math.floor(#requests / 2)) % #requests
end
function request()
  index = index % #requests + 1
  return requests[index]
end
"""


def wrk_keys_script(directory: Path, keys: list[str]) -> Path:
    """A wrk script sending the chat request with each key in turn (one per line of a file)."""
    tag = uuid.uuid4().hex[:6]
    keys_file = directory / f"keys-{tag}.txt"
    keys_file.write_text("".join(f"{key}\n" for key in keys))
    path = directory / f"post-keys-{tag}.lua"
    body = CHAT_BODY.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(KEYS_SCRIPT.format(keys_file=keys_file, body=body))
    return path


# ----------------------------------------------------------------------------- streaming TTFB


class _FirstEvent:
    def __init__(self) -> None:
        self.first_body_at: float | None = None
        self.done = False
        self.status = 0

    def on_headers_complete(self) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        if self.first_body_at is None and b"data:" in body:
            self.first_body_at = time.perf_counter()

    def on_message_complete(self) -> None:
        self.done = True


async def stream_ttfb_ms(
    host: str, port: int, path: str, keys: list[str], count: int
) -> list[float]:
    """Sequential streamed requests on one keep-alive connection: time to the first SSE event.
    With several keys, request i sends key i (modulo their number)."""
    reader, writer = await asyncio.open_connection(host, port)
    body = STREAM_BODY.encode()
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for key in keys[:count]
    ]
    samples = []
    try:
        for i in range(count):
            request = requests[i % len(requests)]
            state = _FirstEvent()
            parser = httptools.HttpResponseParser(state)
            started = time.perf_counter()
            writer.write(request)
            while not state.done:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed mid-response")
                parser.feed_data(data)
            if parser.get_status_code() != 200 or state.first_body_at is None:
                raise RuntimeError(f"streaming request failed: {parser.get_status_code()}")
            samples.append((state.first_body_at - started) * 1000)
    finally:
        writer.close()
    return samples


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None  # whose CPU is measured (with its children)
    stream_path: str = "/v1/completions"
    notes: str = ""
    support_pids: list[int] = field(default_factory=list)  # Redis, PostgreSQL used by the target
    key: str | None = None  # the API key to send, when not the main stack's
    keys: list[str] = field(default_factory=list)  # several keys, sent in turn (many-keys case)


@dataclass
class TargetResult:
    name: str
    notes: str
    case: str = "one-key"
    c32: WrkResult | None = None
    c1: WrkResult | None = None
    cpu_ms_per_request: float | None = None
    stream_ttfb_p50_ms: float | None = None
    stream_ttfb_p99_ms: float | None = None
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def summarize_profile(raw: Path, top: int = 30) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples of the gateway process during the 32-connection run", ""]
    lines.append("self time (where the CPU was when sampled; socket writes show as the line")
    lines.append("calling transport.write, epoll and reads inside the event loop as Runner.run):")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {count * 100 / max(1, total):5.1f}%  {frame}")
    lines.append("")
    lines.append("inclusive time of gateway functions:")
    ours = [(f, c) for f, c in inclusive.items() if "gateway/" in f]
    for frame, count in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"  {count * 100 / max(1, total):5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


def measure(
    target: Target,
    key: str,
    workdir: Path,
    seconds: float,
    stream_count: int,
    py_spy: Path | None = None,
    profile_out: Path | None = None,
    case: str = "one-key",
) -> TargetResult:
    result = TargetResult(target.name, target.notes, case)
    url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
    keys = target.keys or [target.key or key]
    script = wrk_script(workdir, keys[0]) if len(keys) == 1 else wrk_keys_script(workdir, keys)
    try:
        warm = run_wrk(url, script, 32, min(2.0, seconds))  # warm-up: connections, caches, JITs
        result.extra["requests_sent"] = warm.requests
        # Many keys: every key twice (each worker process has its own key cache) before the
        # measurement, so it does not see a fresh process looking up each key for the first
        # time. Each run goes on where the last one stopped (its two threads each sent about
        # half its requests). At most 9 more warm-ups.
        start = warm.requests // 2
        for _ in range(9):
            if len(keys) == 1 or result.extra["requests_sent"] >= 2 * len(keys):
                break
            more = run_wrk(url, script, 32, min(2.0, seconds), start)
            result.extra["requests_sent"] += more.requests
            start += more.requests // 2
        cpu_before = tree_cpu_s(target.proc.pid) if target.proc else 0.0
        support_before = sum(tree_cpu_s(pid) for pid in target.support_pids)
        profiler = None
        if py_spy is not None and target.proc is not None:
            raw = workdir / "gateway-profile.raw"
            profiler = subprocess.Popen(
                [
                    str(py_spy), "record", "--pid", str(target.proc.pid),
                    "--duration", str(max(1, round(seconds) - 1)), "--rate", "250",
                    "--format", "raw", "--output", str(raw), "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        result.c32 = run_wrk(url, script, 32, seconds)
        if profiler is not None and profiler.wait(timeout=30) == 0:
            out = profile_out or RESULTS / "gateway-profile.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(summarize_profile(workdir / "gateway-profile.raw"))
        if target.proc:
            used = tree_cpu_s(target.proc.pid) - cpu_before
            result.cpu_ms_per_request = used * 1000 / max(1, result.c32.requests)
        if target.support_pids:
            support = sum(tree_cpu_s(pid) for pid in target.support_pids) - support_before
            result.extra["redis_postgres_cpu_ms_per_request"] = round(
                support * 1000 / max(1, result.c32.requests), 4
            )
        result.c1 = run_wrk(url, script, 1, seconds)
        samples = asyncio.run(
            stream_ttfb_ms("127.0.0.1", target.port, target.stream_path, keys, stream_count)
        )
        result.extra["requests_sent"] += result.c32.requests + result.c1.requests + len(samples)
        samples.sort()
        result.stream_ttfb_p50_ms = statistics.median(samples)
        result.stream_ttfb_p99_ms = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    except (subprocess.CalledProcessError, RuntimeError, OSError, AttributeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


class Stack:
    """Embedded PostgreSQL + Redis, migrated and seeded with a deployment, a key and an instance
    per upstream port; with `limited_keys`, that many more keys with modest RPM and TPM limits
    (`keys`, the many-keys case)."""

    def __init__(self, workdir: Path, limited_keys: int = 0) -> None:
        from core.embedded import EmbeddedPostgres, EmbeddedRedis

        self.pg = EmbeddedPostgres(workdir / "pg")
        self.redis = EmbeddedRedis(workdir / "redis")
        self.db_url = ""
        self.redis_url = ""
        self.key = "sk-inv-bench" + secrets.token_urlsafe(24)
        self.limited_keys = limited_keys
        self.keys: list[str] = []  # the limited keys' secrets, once seeded

    def start(self, upstream: int | list[int]) -> None:
        from core.migrate import upgrade

        self.db_url = self.pg.start()
        self.redis_url = self.redis.start()
        upgrade(self.db_url)
        asyncio.run(self._seed(upstream, self.limited_keys))

    async def _seed(self, upstream: int | list[int], limited_keys: int = 0) -> None:
        """Rows written through the SQLModel tables (core/models.py), like the API writes them:
        one routable instance per upstream port; the limited keys made by the API's own
        `new_api_key` (its secret format, SHA-256 stored)."""
        import redis.asyncio as aioredis

        from core.db import make_engine, make_sessionmaker
        from core.models import ApiKey, Deployment, InstanceType, Project, Provider
        from core.redis_keys import ROUTING_REGISTRY
        from core.tokens import token_hash
        from core.wire import RoutableInstance, RoutingStrategy

        ports = [upstream] if isinstance(upstream, int) else list(upstream)
        engine = make_engine(self.db_url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session:
                project = Project(name="bench")
                provider = Provider(name="bench", kind="local")
                itype = InstanceType(
                    provider_id=provider.id,
                    name="bench",
                    gpu_count=1,
                    gpu_memory_gb=80,
                    vcpus=8,
                    ram_gb=64,
                    price_per_hour=1,
                )
                deployment = Deployment(
                    project_id=project.id,
                    name="bench",
                    model=MODEL,
                    served_name=MODEL,
                    provider_id=provider.id,
                    instance_type_id=itype.id,
                    min_instances=len(ports),
                    max_instances=len(ports),
                    routing=RoutingStrategy.least_load,
                )
                # Limits far above what the benchmark sends: checked on every request, never hit.
                key = ApiKey(
                    project_id=project.id,
                    name="bench",
                    prefix="sk-inv-bench",
                    key_hash=token_hash(self.key),
                    rpm_limit=2_000_000_000,
                    tpm_limit=2_000_000_000,
                )
                limited = []
                self.keys = []
                if limited_keys:
                    from api.security import new_api_key

                    for i in range(limited_keys):
                        secret, prefix, key_hash = new_api_key()
                        self.keys.append(secret)
                        limited.append(
                            ApiKey(
                                project_id=project.id,
                                name=f"bench-{i}",
                                prefix=prefix,
                                key_hash=key_hash,
                                rpm_limit=MANY_KEYS_RPM,
                                tpm_limit=MANY_KEYS_TPM,
                            )
                        )
                for rows in ([project, provider], [itype], [deployment, key, *limited]):
                    session.add_all(rows)
                    await session.flush()
                await session.commit()
        finally:
            await engine.dispose()
        instances = [
            RoutableInstance(
                instance_id=str(uuid.uuid4()),
                deployment_id=str(deployment.id),
                project_id=str(project.id),
                model=MODEL,
                engine_url=f"http://127.0.0.1:{port}",
                routing=RoutingStrategy.least_load,
            )
            for port in ports
        ]
        client = aioredis.Redis.from_url(self.redis_url)
        await client.hset(
            ROUTING_REGISTRY,
            mapping={i.instance_id: i.model_dump_json() for i in instances},
        )
        await client.aclose()

    def support_pids(self) -> list[int]:
        """Redis and the PostgreSQL server processes (their CPU is part of the gateway's cost)."""
        pids = [self.redis.proc.pid] if self.redis.proc else []
        data_dir = str(self.pg.data_dir.resolve())
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if any(data_dir in part for part in cmdline) and "postgres" in " ".join(cmdline):
                pids.append(proc.pid)
        return pids

    def counters(self) -> tuple[int, int]:
        """Request-log rows in PostgreSQL and commands Redis has processed, for the checks."""
        import asyncpg
        import redis

        async def rows() -> int:
            conn = await asyncpg.connect(self.db_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM request_logs"))
            finally:
                await conn.close()

        client = redis.Redis.from_url(self.redis_url)
        try:
            commands = int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
        return asyncio.run(rows()), commands

    def logged(self, after_id: int) -> tuple[int, int]:
        """The last request-log id, and how many keys the rows after `after_id` name."""
        import asyncpg

        async def query() -> tuple[int, int]:
            conn = await asyncpg.connect(self.db_url)
            try:
                row = await conn.fetchrow(
                    "SELECT coalesce(max(id), 0) AS last, count(DISTINCT api_key_id) "
                    "FILTER (WHERE id > $1) AS keys FROM request_logs",
                    after_id,
                )
                return int(row["last"]), int(row["keys"])
            finally:
                await conn.close()

        return asyncio.run(query())

    def stop(self) -> None:
        self.redis.stop()
        self.pg.stop()


# Run inside another checkout (cwd and PYTHONPATH that tree): its migrations, its seeding.
SEED_IN_TREE = """
import asyncio, sys
from core.migrate import upgrade
from bench.gateway.run import Stack
stack = Stack.__new__(Stack)
stack.db_url, stack.redis_url, stack.key = sys.argv[1], sys.argv[2], sys.argv[3]
upgrade(stack.db_url)
asyncio.run(stack._seed(int(sys.argv[4])))
"""


class TreeStack(Stack):
    """The stack of another checkout's gateway: its own PostgreSQL and Redis, with that tree's
    schema and seed rows (`bench/gateway/run.py`'s `Stack._seed` there), so an older gateway
    reads the tables and the routing registry it was written for."""

    def __init__(self, workdir: Path, tree: Path) -> None:
        super().__init__(workdir)
        self.tree = tree

    def start(self, upstream: int | list[int]) -> None:
        # The one-key case only: one upstream port, as every tree's seeding takes.
        upstream_port = upstream if isinstance(upstream, int) else upstream[0]
        self.db_url = self.pg.start()
        self.redis_url = self.redis.start()
        subprocess.run(
            [sys.executable, "-c", SEED_IN_TREE, self.db_url, self.redis_url, self.key,
             str(upstream_port)],
            cwd=self.tree,
            env=tree_env(self.tree),
            check=True,
        )  # fmt: skip


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes `import gateway`, `import core` find that tree's packages."""
    env = dict(os.environ)
    if tree.resolve() != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return env


def tree_state() -> str:
    """This checkout's commit, and the files of gateway/ changed since (measured as they are)."""
    head = tree_commit(ROOT)
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    files = [line[3:] for line in changed if line.strip()]
    return head + (f" with changes to {', '.join(files)}" if files else "")


def tree_commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


METRICS_TOKEN = secrets.token_urlsafe(24)


def requests_counted(port: int) -> float | None:
    """The gateway's own count of requests served, summed from its /metrics (all workers)."""
    import httpx

    try:
        response = httpx.get(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10,
        )
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith("inventiv_gateway_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_nginx(workdir: Path, name: str, servers: str, workers: int) -> subprocess.Popen[bytes]:
    conf = workdir / f"{name}.conf"
    conf.write_text(NGINX_COMMON.format(workers=workers, dir=workdir, name=name, servers=servers))
    return subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"],
        start_new_session=True,
    )


SERVERS = ("lean", "uvicorn", "granian")


def granian_path(tools_venv: Path) -> Path | None:
    """Where granian was installed for the benchmark (`pip install --no-deps --target
    TOOLS_VENV/servers granian`): a folder put on the gateway's PYTHONPATH, so granian runs in
    .venv's interpreter with .venv's packages (its one dependency, click, is there)."""
    folder = tools_venv / "servers"
    return folder if (folder / "granian" / "__init__.py").exists() else None


def start_gateway(
    stack: Stack,
    port: int,
    workers: int,
    server: str,
    tree: Path = ROOT,
    granian: Path | None = None,
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """The gateway's ASGI app with `workers` processes, served by `server`: `lean` (its own HTTP
    server) or `uvicorn` (httptools, uvloop) through `python -m gateway`, or granian's own
    command line (its Rust HTTP/1.1 server, uvloop) with the app from a zero-argument factory.
    `settings`: more INVENTIV_* variables; the one edge limit granian has in common with the lean
    server, the header-block deadline, is set from INVENTIV_GATEWAY_HEADER_TIMEOUT_S (10 s)."""
    env = {
        **tree_env(tree),
        "INVENTIV_DATABASE_URL": stack.db_url,
        "INVENTIV_REDIS_URL": stack.redis_url,
        "INVENTIV_HOST": "127.0.0.1",
        "INVENTIV_GATEWAY_PORT": str(port),
        "INVENTIV_GATEWAY_WORKERS": str(workers),
        "INVENTIV_GATEWAY_SERVER": server,
        # The gateway derives each engine's API key from it (the benchmark's engine needs none).
        "INVENTIV_SECRET_KEY": secrets.token_urlsafe(32),
        # /metrics behind a bearer token, read with it after each run (older gateways ignore it).
        "INVENTIV_METRICS_TOKEN": METRICS_TOKEN,
        **(settings or {}),
    }
    command = [sys.executable, "-m", "gateway"]
    if server == "granian":
        if granian is None:
            raise RuntimeError("granian is not installed for the benchmark")
        del env["INVENTIV_GATEWAY_SERVER"]  # python -m gateway's setting: lean or uvicorn
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(granian), env.get("PYTHONPATH")]))
        if workers > 1:  # what `python -m gateway` does for its workers: shared metric values
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inventiv-bench-granian-")
        header_timeout_ms = round(float(env.get("INVENTIV_GATEWAY_HEADER_TIMEOUT_S", 10)) * 1000)
        command = [
            sys.executable, "-m", "granian",
            "--interface", "asgi", "--factory", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--backlog", "4096", "--log-level", "warning",
            "--http1-header-read-timeout", str(header_timeout_ms),
            "bench.gateway.asgi_app:create",
        ]  # fmt: skip
    return subprocess.Popen(command, cwd=tree, env=env, start_new_session=True)


GATEWAY_NAME = re.compile(r"inventiv-gateway x(\d+)(?: @(\S+))?(?: #(\d+))?")


def cpu_before_after(results: list[TargetResult], rounds: int) -> list[str]:
    """This tree's gateway CPU ms per request over each baseline's, round by round (same run)."""
    head: dict[tuple[int, int], TargetResult] = {}
    base: dict[tuple[int, str, int], TargetResult] = {}
    for r in results:
        match = GATEWAY_NAME.fullmatch(r.name)
        if not match or r.cpu_ms_per_request is None:
            continue
        workers, commit, round_no = int(match[1]), match[2], int(match[3] or 1)
        if commit:
            base[(workers, commit, round_no)] = r
        else:
            head[(workers, round_no)] = r
    lines = []
    for workers, commit in sorted({(w, c) for w, c, _ in base}):
        own: list[float] = []
        total: list[float] = []
        parts = []
        for round_no in range(1, rounds + 1):
            after, before = head.get((workers, round_no)), base.get((workers, commit, round_no))
            if after is None or before is None:
                continue
            a, b = after.cpu_ms_per_request or 0.0, before.cpu_ms_per_request or 0.0
            own.append(a / b)
            a_all = a + after.extra.get("redis_postgres_cpu_ms_per_request", 0.0)
            b_all = b + before.extra.get("redis_postgres_cpu_ms_per_request", 0.0)
            total.append(a_all / b_all)
            parts.append(f"{a:.3f}/{b:.3f} = {a / b:.2f}")
        if not own:
            continue
        spread = f" (median {statistics.median(own):.2f}, {min(own):.2f} to {max(own):.2f})"
        lines.append(
            f"CPU ms/req after/before, inventiv-gateway x{workers} over @{commit}: "
            + ", ".join(parts)
            + (spread if len(own) > 1 else "")
            + "; with its Redis and PostgreSQL: "
            + ", ".join(f"{t:.2f}" for t in total)
        )
    return lines


def _load_into(
    done: dict[str, WrkResult],
    label: str,
    url: str,
    script: Path,
    connections: int,
    seconds: float,
) -> None:
    """wrk in a thread of its own (side by side): its result, when it ran, under `label`."""
    done[label] = run_wrk(url, script, connections, seconds)


def side_by_side(
    trees: list[tuple[str, Path, Stack]],
    workdir: Path,
    rounds: int,
    seconds: float,
    server: str,
    connections: int = 16,
) -> list[str]:
    """This tree's 1-worker gateway and each baseline's, loaded at the same time, each by its own
    wrk: the machine's load, whatever it is, weighs on both alike, so their CPU ms per request
    compare far more steadily than in runs one after the other. Figures: this tree's over the
    baseline's, one per round (after a warm-up round)."""
    import threading

    lines = []
    ours = trees[0]
    for other in trees[1:]:
        procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
        try:
            for label, tree, stack in (ours, other):
                port = free_port()
                proc = start_gateway(stack, port, 1, server, tree)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                procs[label] = (proc, url, wrk_script(workdir, stack.key))
                asyncio.run(wait_http(f"http://127.0.0.1:{port}/readyz", 60, proc))
            ratios: list[float] = []
            errors = 0
            for round_no in range(rounds + 1):
                done: dict[str, WrkResult] = {}
                before = {label: tree_cpu_s(proc.pid) for label, (proc, _, _) in procs.items()}
                threads = [
                    threading.Thread(
                        target=_load_into, args=(done, label, url, script, connections, seconds)
                    )
                    for label, (_, url, script) in procs.items()
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if len(done) < len(procs):
                    raise RuntimeError("wrk failed in the side-by-side run")
                cpu = {
                    label: (tree_cpu_s(proc.pid) - before[label]) / max(1, done[label].requests)
                    for label, (proc, _, _) in procs.items()
                }
                errors += sum(result.errors for result in done.values())
                if round_no:  # round 0 warms both up
                    ratios.append(cpu[ours[0]] / cpu[other[0]])
            ratios.sort()
            lines.append(
                f"CPU ms/req after/before side by side (x1, {connections} connections each, "
                f"{rounds} rounds of {seconds:.0f} s), inventiv-gateway x1 over{other[0]}: "
                f"median {statistics.median(ratios):.2f}, {ratios[0]:.2f} to {ratios[-1]:.2f} "
                f"({', '.join(f'{r:.2f}' for r in ratios)}); errors {errors}"
            )
        except (RuntimeError, TimeoutError, OSError) as exc:
            lines.append(f"side by side with{other[0]} failed: {type(exc).__name__}: {exc}")
        finally:
            for proc, _, _ in procs.values():
                stop(proc)
    return lines


CASES = ("one-key", "many-keys")
CASE_TITLES = {
    "one-key": "One key, one upstream instance",
    "many-keys": "Many keys, several instances",
}


def case_description(case: str, meta: dict[str, object]) -> str:
    if case == "one-key":
        return (
            "One API key with limits far above the load (the rate limiter leases it up to 256 "
            "request slots at a time, so most requests skip Redis) and one instance (the router's "
            "single-instance path skips scoring): the gateway's best case."
        )
    return (
        f"{meta.get('keys', MANY_KEYS):,} API keys (the API's key format, SHA-256 stored), each "
        f"limited to {MANY_KEYS_RPM} requests and {MANY_KEYS_TPM:,} tokens a minute, wrk sending "
        "them in turn (a Lua script, one key per request; the streamed requests too), so no key "
        "nears its limits but every request is admitted by its own Redis call (a key's rate is "
        "too low for leases). The warm-up sends every key twice (more warm-up rounds when "
        "needed, each going on where the last stopped) so the key cache is warm: its entries "
        "live 600 s, longer than the run. "
        f"{meta.get('instances', MANY_KEYS_INSTANCES)} ready instances "
        "of the deployment (4 ports of the upstream nginx), scored by least load; vllm-router "
        "round-robins over the same 4, without auth."
    )


def render_markdown(results: list[TargetResult], meta: dict[str, object]) -> str:
    def added(value: float | None, base: float | None) -> str:
        if value is None or base is None:
            return "-"
        return f"{value - base:+.2f}"

    lines = [
        f"Gateway benchmark, {meta['date']}, {meta['cpus']} CPUs ({meta['machine']}), "
        f"wrk {meta['seconds']} s per configuration, upstream: nginx returning a fixed "
        'completion. Latencies in ms; "added" is the difference with the direct figure of the '
        f"same case. Gateway code: {meta.get('tree', '?')}.",
    ]
    cases = [c for c in CASES if any(r.case == c for r in results)]
    for case in cases:
        rows = [r for r in results if r.case == case]
        direct = next((r for r in rows if r.name == "direct" and r.c32), None)
        lines += [
            "",
            f"## {CASE_TITLES[case]}",
            "",
            case_description(case, meta),
            "",
            "| target | req/s @32 | p50 @32 | p99 @32 | added p50 @1 | added p99 @1 | "
            "CPU ms/req | + Redis/PG CPU ms/req | stream TTFB added p50 | errors | "
            "logs/req | metrics/req | Redis cmds/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if r.c32 is None or r.c1 is None:
                lines.append(f"| {r.name} | {r.error or 'skipped'} | | | | | | | | | | | |")
                continue
            base1 = direct.c1 if direct else None
            lines.append(
                f"| {r.name} | {r.c32.rps:,.0f} | {r.c32.p50_ms:.2f} | {r.c32.p99_ms:.2f} | "
                f"{added(r.c1.p50_ms, base1.p50_ms if base1 else None)} | "
                f"{added(r.c1.p99_ms, base1.p99_ms if base1 else None)} | "
                f"{'-' if r.cpu_ms_per_request is None else f'{r.cpu_ms_per_request:.3f}'} | "
                f"{r.extra.get('redis_postgres_cpu_ms_per_request', '-')} | "
                f"{added(r.stream_ttfb_p50_ms, direct.stream_ttfb_p50_ms if direct else None)} | "
                f"{r.c32.errors + r.c1.errors} | "
                f"{r.extra.get('request_logs_per_request', '-')} | "
                f"{r.extra.get('metrics_requests_per_request', '-')} | "
                f"{r.extra.get('redis_commands_per_request', '-')} |"
            )
        lines.append("")
        for r in rows:
            if r.notes:
                lines.append(f"- **{r.name}**: {r.notes}")
        ratios = meta.get("ratios")
        if isinstance(ratios, dict) and isinstance(ratios.get(case), dict) and ratios[case]:
            lines.append("")
            lines.append(
                "Ratios from this run: " + ", ".join(f"{k} {v}" for k, v in ratios[case].items())
            )
    if any("request_logs_per_request" in r.extra for r in results):
        lines.append("")
        lines.append(
            "Checks, per request sent to a gateway (warm-up, both wrk runs and the streamed ones): "
            "logs/req, rows its request-log writer added to PostgreSQL; metrics/req, its own "
            "inventiv_gateway_requests_total read from /metrics (with the scrape token); Redis "
            "cmds/req, commands its Redis processed (rate limits and their leases, TPM settlements, "
            "the gateway's periodic reads and publications)."
        )
    if any(SERVER_NAME.fullmatch(r.name) for r in results):
        lines.append("")
        lines.append(SERVERS_NOTE)
    edges = meta.get("edges")
    if isinstance(edges, dict) and edges:
        from bench.gateway.edges import EDGES_NOTE, render

        lines += ["", "### HTTP edge limits, probed", "", EDGES_NOTE, "", *render(edges)]
    before_after = meta.get("cpu_before_after")
    if isinstance(before_after, list) and before_after:
        lines.append("")
        lines.extend(f"{line}." for line in before_after)
    return "\n".join(lines) + "\n"


SERVER_NAME = re.compile(r"inventiv-gateway x(\d+) (uvicorn|granian)")
SERVERS_NOTE = (
    "Servers: the same ASGI app (`gateway.app.Gateway`, every check on: API key, RPM and TPM "
    "limits, the per-key in-flight cap, request logs, metrics, accounting, the 32 MiB body cap "
    "of `read_body`) under each server. The lean server also enforces the HTTP edge limits "
    "(`ServerLimits`: request-line, header-block and header-count caps, header and body "
    "deadlines, a write deadline, connections per client); uvicorn and granian enforce only "
    "their own (see `bench/gateway/README.md`, Server choice). Under them the app watches for "
    "a disconnect with a task per request waiting on `receive()` (the lean server calls back "
    "instead)."
)


def server_versions(granian: Path | None) -> dict[str, str]:
    import importlib.metadata

    versions = {"uvicorn": importlib.metadata.version("uvicorn")}
    if granian is not None:
        for dist in importlib.metadata.distributions(path=[str(granian)]):
            if dist.metadata["Name"] == "granian":
                versions["granian"] = dist.version
    return versions


def case_ratios(results: list[TargetResult]) -> dict[str, str]:
    """The best lean gateway against vllm-router and nginx; each other server against the lean
    one with as many workers (CPU ms/req, req/s, p99 @32)."""
    by_name = {r.name: r for r in results if r.c32}
    ratios: dict[str, str] = {}
    lean = {name: r for name, r in by_name.items() if re.fullmatch(r"inventiv-gateway x\d+", name)}
    best = max(lean.values(), key=lambda r: r.c32.rps if r.c32 else 0, default=None)
    if best and best.c32:
        for other in ("vllm-router", "litellm", "nginx"):
            theirs = by_name.get(other)
            if theirs is not None and theirs.c32:
                ratios[f"{best.name} / {other} throughput"] = (
                    f"{best.c32.rps / theirs.c32.rps:.2f}x"
                )
        router = by_name.get("vllm-router")
        if router is not None and router.c32:
            for name, r in lean.items():
                if r.c32:
                    ratios[f"{name} / vllm-router p99 @32"] = (
                        f"{r.c32.p99_ms / router.c32.p99_ms:.2f}x"
                    )
    for name, r in by_name.items():
        match = SERVER_NAME.fullmatch(name)
        base = lean.get(f"inventiv-gateway x{match[1]}") if match else None
        if match is None or base is None or not base.c32 or not r.c32:
            continue
        if r.cpu_ms_per_request and base.cpu_ms_per_request:
            ratios[f"{name} / lean CPU ms/req"] = (
                f"{r.cpu_ms_per_request / base.cpu_ms_per_request:.2f}x"
            )
        ratios[f"{name} / lean req/s"] = f"{r.c32.rps / base.c32.rps:.2f}x"
        ratios[f"{name} / lean p99 @32"] = f"{r.c32.p99_ms / base.c32.p99_ms:.2f}x"
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="wrk duration per configuration"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per configuration")
    parser.add_argument("--stream-requests", type=int, default=300)
    parser.add_argument("--tools-venv", type=Path, default=Path("/tmp/bench-venv"))
    parser.add_argument("--only", default="", help="comma-separated target names to run")
    parser.add_argument("--workers", default="1,2", help="gateway worker counts to measure")
    parser.add_argument(
        "--case",
        default="all",
        choices=["all", *CASES],
        help="one-key: one key with huge limits, one instance (with the other servers and any "
        "baseline tree); many-keys: --keys keys at modest RPM and TPM limits, --instances "
        "instances; all (the default): both",
    )
    parser.add_argument("--keys", type=int, default=MANY_KEYS, help="keys of the many-keys case")
    parser.add_argument(
        "--instances", type=int, default=MANY_KEYS_INSTANCES, help="instances, many-keys case"
    )
    parser.add_argument(
        "--gateway-server",
        default="lean",
        choices=["lean", "uvicorn"],
        help="the server of the 'inventiv-gateway xN' targets",
    )
    parser.add_argument(
        "--servers",
        default="uvicorn,granian",
        help="other ASGI servers carrying the same app in the one-key case, as 'inventiv-gateway "
        "xN SERVER' (uvicorn, granian; granian from TOOLS_VENV/servers, see README); '' for none",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder of the results (NAME.md, NAME.json, the profiles)",
    )
    parser.add_argument("--name", default="gateway", help="file name of the results, no suffix")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        action="append",
        default=[],
        help="another checkout (git worktree add PATH COMMIT) whose gateway is measured too, as "
        "'inventiv-gateway xN @COMMIT' (one-key case); may be given more than once",
    )
    parser.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="N",
        help="with --baseline-tree: also N rounds of this tree's and each baseline's 1-worker "
        "gateway loaded at the same time (a steadier before/after on a busy machine)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the gateway targets this many times, alternating trees (noise)",
    )
    parser.add_argument(
        "--no-edges",
        action="store_true",
        help="skip probing the servers' HTTP edge limits (bench.gateway.edges, ~25 s; run when "
        "--servers compares servers)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the py-spy profiles of the 1-worker gateway (taken when py-spy is in the "
        "tools venv: pip install py-spy)",
    )
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    only = {name for name in args.only.split(",") if name}
    cases = list(CASES) if args.case == "all" else [args.case]
    servers = [name for name in args.servers.split(",") if name]
    for name in servers:
        if name not in SERVERS or name == "lean":
            sys.exit(f"--servers: unknown server {name!r} (uvicorn, granian)")
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        sys.exit("wrk and nginx are needed: apt-get install -y wrk nginx")
    results_dir: Path = args.results
    granian = granian_path(args.tools_venv)
    versions = server_versions(granian)

    workdir = Path(tempfile.mkdtemp(prefix="inventiv-bench-gateway-"))
    processes: list[subprocess.Popen[bytes]] = []
    results: list[TargetResult] = []
    stacks: list[Stack] = []
    side_lines: list[str] = []
    edges: dict[str, dict[str, str]] = {}
    try:
        ports = [free_port() for _ in range(args.instances if "many-keys" in cases else 1)]
        upstream = start_nginx(workdir, "upstream", upstream_servers(ports), workers=1)
        processes.append(upstream)
        for port in ports:
            asyncio.run(wait_http(f"http://127.0.0.1:{port}/", proc=upstream))
        upstream_port = ports[0]
        case_stacks: dict[str, Stack] = {}
        if "one-key" in cases:
            stack = case_stacks["one-key"] = Stack(workdir / "one-key")
            stacks.append(stack)
            stack.start(upstream_port)
        if "many-keys" in cases:
            print(f"-- seeding {args.keys:,} keys", flush=True)
            many = case_stacks["many-keys"] = Stack(workdir / "many-keys", args.keys)
            stacks.append(many)
            many.start(ports)

        def started(
            url: str, proc: subprocess.Popen[bytes], name: str, case: str, timeout: float = 60
        ) -> bool:
            try:
                asyncio.run(wait_http(url, timeout, proc))
                return True
            except (RuntimeError, TimeoutError) as exc:
                results.append(TargetResult(name, "", case, error=f"did not start: {exc}"))
                stop(proc)
                return False

        def want(name: str) -> bool:
            return not only or name in only

        py_spy = args.tools_venv / "bin" / "py-spy"

        def run(target: Target, case: str, profile_out: Path | None = None) -> None:
            print(f"-- {case}: {target.name}", flush=True)
            profile = (
                py_spy
                if profile_out is not None and py_spy.exists() and not args.no_profile
                else None
            )
            stack = case_stacks[case]
            result = measure(
                target, stack.key, workdir, seconds, args.stream_requests, profile, profile_out,
                case,
            )  # fmt: skip
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)

        def gateway(
            case: str,
            name: str,
            stack: Stack,
            workers: int,
            server: str,
            tree: Path = ROOT,
            where: str = "",
            profile_out: Path | None = None,
        ) -> None:
            """Start a gateway, measure it with its checks counted, stop it (its last request
            logs flushed)."""
            port = free_port()
            try:
                proc = start_gateway(stack, port, workers, server, tree, granian)
            except RuntimeError as exc:
                results.append(TargetResult(name, "", case, error=str(exc)))
                return
            processes.append(proc)
            if not started(f"http://127.0.0.1:{port}/readyz", proc, name, case):
                return
            served_by = {
                "lean": "its own HTTP server",
                "uvicorn": f"uvicorn {versions['uvicorn']} (httptools, uvloop; "
                "INVENTIV_GATEWAY_SERVER=uvicorn)",
                "granian": f"granian {versions.get('granian', '?')} (ASGI, HTTP/1, uvloop; "
                "bench.gateway.asgi_app:create)",
            }[server]
            target = Target(
                name,
                port,
                proc,
                notes=f"{where}{workers} worker process(es), {served_by}; API key, RPM+TPM "
                "limits (Redis), request logs (PostgreSQL), Prometheus metrics, usage "
                "accounting on",
                support_pids=stack.support_pids(),
                key=stack.key,
                keys=stack.keys,
            )
            logs_before, redis_before = stack.counters()
            last_log = stack.logged(0)[0] if stack.keys else 0
            run(target, case, profile_out)
            result = results[-1]
            counted = requests_counted(port)
            stop(proc)  # a graceful stop flushes the last request logs
            sent = result.extra.get("requests_sent")
            if stack.keys:
                used = result.extra["keys_used"] = stack.logged(last_log)[1]
                result.notes += f"; its request logs name {used:,} keys"
            if sent:
                if counted is not None:
                    result.extra["metrics_requests_per_request"] = round(counted / sent, 3)
                logs_after, redis_after = stack.counters()
                result.extra["request_logs_per_request"] = round(
                    (logs_after - logs_before) / sent, 3
                )
                result.extra["redis_commands_per_request"] = round(
                    (redis_after - redis_before) / sent, 2
                )

        def router(case: str, upstream_ports: list[int]) -> None:
            router_bin = args.tools_venv / "bin" / "vllm-router"
            if not want("vllm-router") or not router_bin.exists():
                return
            port = free_port()
            proc = subprocess.Popen(
                [
                    str(router_bin),
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--worker-urls", *(f"http://127.0.0.1:{p}" for p in upstream_ports),
                    "--policy", "round_robin",
                    "--log-level", "warning",
                    "--prometheus-port", str(free_port()),
                ],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(proc)
            if started(f"http://127.0.0.1:{port}/health", proc, "vllm-router", case):
                over = f" over {len(upstream_ports)} upstreams" if len(upstream_ports) > 1 else ""
                run(
                    Target(
                        "vllm-router",
                        port,
                        proc,
                        notes=f"Rust router, round robin{over}, no auth",
                        keys=case_stacks[case].keys,
                    ),
                    case,
                )
            stop(proc)

        worker_counts = [int(w) for w in args.workers.split(",") if w]
        for case in cases:
            stack = case_stacks[case]
            if want("direct"):
                run(
                    Target(
                        "direct",
                        upstream_port,
                        None,
                        notes="wrk straight to the upstream (one of its ports)",
                        keys=stack.keys,
                    ),
                    case,
                )
            if case == "many-keys":
                for workers in worker_counts:
                    name = f"inventiv-gateway x{workers}"
                    if want(name) or want("gateway"):
                        profile = results_dir / "gateway-profile-many-keys.txt"
                        gateway(
                            case, name, stack, workers, args.gateway_server,
                            profile_out=profile if workers == 1 else None,
                        )  # fmt: skip
                router(case, ports)
                continue

            if want("nginx"):
                port = free_port()
                proc = start_nginx(
                    workdir,
                    "proxy",
                    PROXY_SERVERS.format(upstream=upstream_port, port=port),
                    workers=1,
                )
                processes.append(proc)
                asyncio.run(wait_http(f"http://127.0.0.1:{port}/", proc=proc))
                run(
                    Target(
                        "nginx", port, proc, notes="reverse proxy, 1 worker, keep-alive upstream"
                    ),
                    case,
                )
                stop(proc)

            trees: list[tuple[str, Path, Stack]] = [("", ROOT, stack)]
            for tree in args.baseline_tree:
                baseline = TreeStack(workdir / f"baseline-{len(trees)}", tree)
                stacks.append(baseline)
                baseline.start(upstream_port)
                trees.append((f" @{tree_commit(tree)}", tree, baseline))
            for round_no in range(1, args.rounds + 1):
                for workers in worker_counts:
                    base_name = f"inventiv-gateway x{workers}"
                    # Odd rounds this tree first, even rounds the baselines first: a drift of the
                    # machine's load over the run does not favour one side.
                    for label, tree, tree_stack in trees if round_no % 2 else trees[::-1]:
                        if not want(base_name) and not want("gateway"):
                            break
                        name = base_name + label + (f" #{round_no}" if args.rounds > 1 else "")
                        where = f"the gateway of {tree} at {label.strip(' @')}, " if label else ""
                        profile_out = None
                        if round_no == 1 and workers == 1:
                            profile_out = results_dir / (
                                f"gateway-profile-{label.strip(' @')}.txt"
                                if label
                                else "gateway-profile.txt"
                            )
                        gateway(
                            case, name, tree_stack, workers, args.gateway_server, tree, where,
                            profile_out,
                        )  # fmt: skip
                    if round_no > 1:
                        continue
                    # The same app under the other servers, right after it: alike machine load.
                    for server in servers:
                        name = f"{base_name} {server}"
                        if want(name) or want(server):
                            gateway(case, name, stack, workers, server)

            if args.side_by_side and len(trees) > 1:
                print("-- side by side", flush=True)
                side_lines = side_by_side(
                    trees, workdir, args.side_by_side, seconds, args.gateway_server
                )
                for line in side_lines:
                    print(line, flush=True)

            router(case, [upstream_port])

            if servers and not args.no_edges:
                from bench.gateway.edges import probe_servers

                edges = probe_servers(stack, [args.gateway_server, *servers], args.tools_venv)

            litellm_bin = args.tools_venv / "bin" / "litellm"
            if want("litellm") and litellm_bin.exists():
                port = free_port()
                config = workdir / "litellm.yaml"
                config.write_text(
                    "model_list:\n"
                    f"  - model_name: {MODEL}\n"
                    "    litellm_params:\n"
                    f"      model: openai/{MODEL}\n"
                    f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
                    "      api_key: sk-upstream\n"
                    "litellm_settings:\n"
                    "  drop_params: true\n"
                    "  telemetry: false\n"
                    "general_settings:\n"
                    f"  master_key: {stack.key}\n"
                )
                proc = subprocess.Popen(
                    [
                        str(litellm_bin), "--config", str(config),
                        "--host", "127.0.0.1", "--port", str(port),
                    ],
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"},
                )  # fmt: skip
                processes.append(proc)
                if started(
                    f"http://127.0.0.1:{port}/health/liveliness", proc, "litellm", case, 180
                ):
                    run(
                        Target(
                            "litellm",
                            port,
                            proc,
                            notes="LiteLLM proxy, master key auth, no database",
                        ),
                        case,
                    )
                stop(proc)
    finally:
        for proc in reversed(processes):
            stop(proc)
        for each in reversed(stacks):
            each.stop()

    ratios = {case: case_ratios([r for r in results if r.case == case]) for case in cases}
    before_after = cpu_before_after(results, args.rounds) + side_lines
    for line in before_after:
        print(line)
    meta: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "seconds": seconds,
        "python": platform.python_version(),
        "cases": cases,
        "keys": args.keys,
        "instances": args.instances,
        "many_keys_limits": {"rpm": MANY_KEYS_RPM, "tpm": MANY_KEYS_TPM},
        "servers": {"lean": "gateway/protocols/http_server.py", **versions},
        "ratios": ratios,
        "edges": edges,
        "tree": tree_state(),
        "baseline_trees": [str(tree) for tree in args.baseline_tree],
        "rounds": args.rounds,
        "cpu_before_after": before_after,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2)
    )
    markdown = render_markdown(results, meta)
    (results_dir / f"{args.name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
