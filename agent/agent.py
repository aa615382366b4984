"""The node agent: supervises the engine on a GPU machine and reports on it.

`AGENT_VERSION`, `AGENT_BUILD_DATE` and the SHA-256 of this file identify the agent;
agent/identity.py reads them as data, and the control plane compares them with the bundled
agent's to flag a tampered or stale one. Any change to this file needs a version bump
(`python -m agent.version_tool bump`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from agent.engine_metrics import EngineStats, parse_engine_metrics
from agent.gpu import GpuReader, read_host
from agent.heartbeat import HeartbeatSender
from agent.identity import bundled_agent
from agent.model_cache import ModelCache
from agent.settings import AgentSettings
from agent.supervisor import EngineState, EngineSupervisor
from core.wire import AgentHeartbeat, AgentInfo, EngineLoad, GpuSample

AGENT_VERSION = "0.1.11"
AGENT_BUILD_DATE = "2026-12-02"

log = logging.getLogger("agent")


def agent_info() -> AgentInfo:
    identity = bundled_agent()
    return AgentInfo(
        version=identity.version, build_date=identity.build_date, checksum=identity.checksum
    )


class AgentMetrics:
    """The agent's own /metrics: the machine and the engine as the agent sees them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.engine_up = Gauge(
            "inventiv_agent_engine_ready", "1 when the engine serves the model", registry=r
        )
        self.engine_restarts = Gauge(
            "inventiv_agent_engine_restarts", "Engine restarts", registry=r
        )
        self.crash_loop = Gauge("inventiv_agent_engine_crash_loop", "1 in a crash loop", registry=r)
        self.running = Gauge(
            "inventiv_agent_engine_requests_running", "vllm:num_requests_running", registry=r
        )
        self.waiting = Gauge(
            "inventiv_agent_engine_requests_waiting", "vllm:num_requests_waiting", registry=r
        )
        self.kv = Gauge("inventiv_agent_engine_kv_cache_usage", "KV-cache usage 0..1", registry=r)
        # the engine's counters, mirrored as last read (they restart with the engine)
        self.prompt_tokens = Gauge(
            "inventiv_agent_engine_prompt_tokens", "vllm:prompt_tokens_total", registry=r
        )
        self.generation_tokens = Gauge(
            "inventiv_agent_engine_generation_tokens", "vllm:generation_tokens_total", registry=r
        )
        self.ttft_sum = Gauge(
            "inventiv_agent_engine_ttft_seconds_sum", "vllm TTFT histogram sum", registry=r
        )
        self.ttft_count = Gauge(
            "inventiv_agent_engine_ttft_seconds_count", "vllm TTFT histogram count", registry=r
        )
        info = Gauge("inventiv_agent_info", "Agent identity", ["version", "checksum"], registry=r)
        info.labels(AGENT_VERSION, bundled_agent().checksum).set(1)
        self.cpu = Gauge("inventiv_agent_cpu_percent", "Machine CPU use", registry=r)
        self.ram = Gauge("inventiv_agent_ram_percent", "Machine RAM use", registry=r)
        self.disk = Gauge("inventiv_agent_disk_percent", "Model-cache volume use", registry=r)
        self.download_done = Gauge(
            "inventiv_agent_model_download_bytes", "Model bytes downloaded", registry=r
        )
        gpu = ["gpu"]
        self.gpu_util = Gauge("inventiv_agent_gpu_utilization_percent", "GPU use", gpu, registry=r)
        self.gpu_mem_used = Gauge(
            "inventiv_agent_gpu_memory_used_mb", "GPU memory used", gpu, registry=r
        )
        self.gpu_mem_total = Gauge(
            "inventiv_agent_gpu_memory_total_mb", "GPU memory", gpu, registry=r
        )
        self.gpu_temp = Gauge(
            "inventiv_agent_gpu_temperature_celsius", "GPU temperature", gpu, registry=r
        )
        self.gpu_power = Gauge("inventiv_agent_gpu_power_watts", "GPU power draw", gpu, registry=r)

    def update_gpus(self, gpus: list[GpuSample] | None) -> None:
        for sample in gpus or []:
            label = str(sample.index)
            for gauge, value in (
                (self.gpu_util, sample.utilization_pct),
                (self.gpu_mem_used, sample.memory_used_mb),
                (self.gpu_mem_total, sample.memory_total_mb),
                (self.gpu_temp, sample.temperature_c),
                (self.gpu_power, sample.power_w),
            ):
                if value is not None:
                    gauge.labels(label).set(value)


def _set(gauge: Gauge, value: float | None) -> None:
    if value is not None:
        gauge.set(value)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.model_cache = ModelCache(settings) if settings.model_cache_dir else None
        self.supervisor = EngineSupervisor(
            settings, prepare=self.model_cache.ensure if self.model_cache else None
        )
        self.gpus = GpuReader()
        self.metrics = AgentMetrics()
        self.started_at = time.time()
        self._busy_mark: tuple[float, float] | None = None  # (monotonic time, busy seconds)
        engine_key = settings.engine_api_key.get_secret_value()
        self._http = httpx.AsyncClient(
            timeout=settings.engine_probe_timeout_s,
            headers={"Authorization": f"Bearer {engine_key}"} if engine_key else None,
        )
        self.heartbeats = HeartbeatSender(settings, self.heartbeat)

    async def start(self) -> None:
        log.info(
            "agent %s (%s) checksum %s; engine %s serving %s as %s",
            AGENT_VERSION,
            AGENT_BUILD_DATE,
            bundled_agent().checksum,
            self.settings.engine_command,
            self.settings.model,
            self.settings.served,
        )
        if not self.gpus.available:
            log.info("no GPU metrics: %s", self.gpus.error)
        self.supervisor.start()
        self.heartbeats.start()

    async def stop(self) -> None:
        await self.heartbeats.stop()
        await self.supervisor.stop()
        await self._http.aclose()
        self.gpus.close()

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready when the engine lists the served model at /v1/models."""
        state = self.supervisor.state
        if state in (EngineState.preparing, EngineState.failed, EngineState.stopped):
            reason = self.supervisor.last_error if state == EngineState.failed else None
            return False, f"engine {state}" + (f": {reason}" if reason else "")
        try:
            response = await self._http.get(f"{self.settings.engine_url}/v1/models")
        except httpx.HTTPError as exc:
            return False, f"engine {state}, not answering at {self.settings.engine_url}: {exc!r}"
        if response.status_code != 200:
            return False, f"engine /v1/models answered HTTP {response.status_code}"
        try:
            served = {entry.get("id") for entry in response.json().get("data", [])}
        except (ValueError, AttributeError, TypeError):
            return False, "engine /v1/models answered something other than a model list"
        if self.settings.served not in served:
            return False, f"engine serves {sorted(map(str, served))}, not {self.settings.served}"
        self.supervisor.mark_running()
        return True, "engine serves the model"

    async def engine_stats(self) -> EngineStats | None:
        try:
            response = await self._http.get(f"{self.settings.engine_url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        try:
            return parse_engine_metrics(response.text)
        except ValueError:  # not Prometheus text: no figures rather than a failed request
            log.warning("the engine's /metrics is not in the Prometheus text format")
            return None

    def info(self) -> dict[str, Any]:
        supervisor = self.supervisor
        return {
            "version": AGENT_VERSION,
            "build_date": AGENT_BUILD_DATE,
            "checksum": bundled_agent().checksum,
            "engine": {
                "command": supervisor.command,
                "state": supervisor.state,
                "pid": supervisor.pid,
                "last_exit_code": supervisor.last_exit_code,
                "last_error": supervisor.last_error,
                "crash_loop": supervisor.crash_loop,
            },
            "model": self.settings.model,
            "served_name": self.settings.served,
            "engine_url": self.settings.engine_url,
            "gpus": [gpu.model_dump() for gpu in gpus] if (gpus := self.gpus.read()) else None,
            "gpu_error": self.gpus.error,
            "engine_restarts": supervisor.restarts,
            "model_download": self.model_cache.progress.model_dump() if self.model_cache else None,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def heartbeat(self) -> AgentHeartbeat:
        ready, _ = await self.readiness()
        stats = await self.engine_stats() if ready else None
        return AgentHeartbeat(
            instance_id=self.settings.instance_id,
            agent_info=agent_info(),
            engine_state=self.supervisor.state,
            engine_ready=ready,
            engine_restarts=self.supervisor.restarts,
            engine_error=self.supervisor.last_error,
            gpus=self.gpus.read(),
            gpu_error=self.gpus.error,
            host=read_host(self.settings.model_cache_dir),
            load=_load(stats).model_copy(update={"busy_pct": self._busy_share(stats)}),
            model_download=self.model_cache.progress if self.model_cache else None,
        )

    def _busy_share(self, stats: EngineStats | None) -> float | None:
        """The simulator's busy time over the time since the previous heartbeat, percent (None
        from an engine that does not model it, and on the first heartbeat)."""
        busy = stats.busy_seconds_total if stats is not None else None
        mark, now = self._busy_mark, time.monotonic()
        self._busy_mark = (now, busy) if busy is not None else None
        if busy is None or mark is None or now <= mark[0] or busy < mark[1]:
            return None
        return round(min(100.0, 100 * (busy - mark[1]) / (now - mark[0])), 1)

    async def refresh_metrics(self) -> None:
        ready, _ = await self.readiness()
        m = self.metrics
        m.engine_up.set(1 if ready else 0)
        m.engine_restarts.set(self.supervisor.restarts)
        m.crash_loop.set(1 if self.supervisor.crash_loop else 0)
        if ready and (stats := await self.engine_stats()) is not None:
            _set(m.running, stats.requests_running)
            _set(m.waiting, stats.requests_waiting)
            _set(m.kv, stats.kv_cache_usage)
            _set(m.prompt_tokens, stats.prompt_tokens_total)
            _set(m.generation_tokens, stats.generation_tokens_total)
            _set(m.ttft_sum, stats.ttft_seconds_sum)
            _set(m.ttft_count, stats.ttft_seconds_count)
        host = read_host(self.settings.model_cache_dir)
        _set(m.cpu, host.cpu_percent)
        _set(m.ram, host.ram_percent)
        _set(m.disk, host.disk_percent)
        if self.model_cache:
            m.download_done.set(self.model_cache.progress.bytes_done)
        m.update_gpus(self.gpus.read())


def _load(stats: EngineStats | None) -> EngineLoad:
    if stats is None:
        return EngineLoad()
    return EngineLoad(
        requests_running=stats.requests_running,
        requests_waiting=stats.requests_waiting,
        kv_cache_usage=stats.kv_cache_usage,
        in_flight=stats.in_flight,
        prompt_tokens_total=stats.prompt_tokens_total,
        generation_tokens_total=stats.generation_tokens_total,
        ttft_seconds_sum=stats.ttft_seconds_sum,
        ttft_seconds_count=stats.ttft_seconds_count,
    )


def create_app(settings: AgentSettings) -> FastAPI:
    agent = Agent(settings)
    expected = f"Bearer {settings.token.get_secret_value()}".encode()

    def instance_token(authorization: Annotated[str | None, Header()] = None) -> None:
        """/info and /load tell what runs here and how busy it is: the instance's token (the
        control plane derives it) is required. An agent started without one (a manual run)
        has nothing to check against."""
        if settings.token.get_secret_value() and not hmac.compare_digest(
            (authorization or "").encode(), expected
        ):
            raise HTTPException(401, "this agent's token is required")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    app = FastAPI(title="Inventiv agent", version=AGENT_VERSION, lifespan=lifespan)
    app.state.agent = agent

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, reason = await agent.readiness()
        return JSONResponse(
            {"ready": ready, "reason": reason, "engine_state": agent.supervisor.state},
            status_code=200 if ready else 503,
        )

    @app.get("/info", dependencies=[Depends(instance_token)])
    async def info() -> dict[str, Any]:
        return await asyncio.to_thread(agent.info)  # NVML calls block

    @app.get("/load", dependencies=[Depends(instance_token)])
    async def load() -> dict[str, Any]:
        """Engine queue figures. When the engine's /metrics cannot be read (no engine running),
        in_flight is 0: a drain has nothing left to wait for."""
        stats = await agent.engine_stats()
        body = _load(stats).model_dump()
        body["engine_metrics_read"] = stats is not None
        if stats is None:
            body["in_flight"] = 0
        return body

    @app.get("/metrics")
    async def metrics() -> Response:
        await agent.refresh_metrics()
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
