"""Starts the inference engine, streams its log, restarts it with backoff, reports crash loops."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from agent.settings import AgentSettings
from agent.sim.config import vllm_flags

log = logging.getLogger("agent.supervisor")
engine_log = logging.getLogger("agent.engine")

_PR_SET_PDEATHSIG = 1
_MAX_LINE = 1 << 16
_AGENT_SECRETS = (
    "INVENTIV_AGENT_TOKEN",
    "INVENTIV_AGENT_HF_TOKEN",
    "INVENTIV_AGENT_ENGINE_API_KEY",
)


class EngineState(StrEnum):
    preparing = "preparing"  # downloading the model
    starting = "starting"  # process running, not answering yet (the agent's /readyz says more)
    running = "running"
    backoff = "backoff"  # died; waiting before the next start
    crash_loop = "crash_loop"  # died quickly too many times in a row; still retried
    failed = "failed"  # cannot start at all (bad command, model download failed)
    stopped = "stopped"


def engine_flags(args: dict[str, Any]) -> list[str]:
    """{"max-num-seqs": 64, "enforce_eager": true} -> ["--max-num-seqs", "64", "--enforce-eager"].

    `false` is `--no-X` where vLLM's parser has that form (its boolean options), else dropped
    (a plain switch is off by default): `{"enable-prefix-caching": false}` turns off a default."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.lstrip("-").replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            negated = "--no-" + flag[2:]
            if negated in vllm_flags():
                flags.append(negated)
        elif value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, *(str(item) for item in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def build_engine_command(settings: AgentSettings, model_path: str | None = None) -> list[str]:
    """The `vllm serve` command line for this deployment (the simulator takes the same one)."""
    # "{python}" is the interpreter running the agent: the one that has the simulator's packages,
    # wherever the bootstrap installed them.
    command = [
        sys.executable if part == "{python}" else part
        for part in shlex.split(settings.engine_command)
    ]
    command += [model_path or settings.model]
    command += ["--host", settings.engine_host, "--port", str(settings.engine_port)]
    command += ["--served-model-name", settings.served]
    if settings.gpu_count:
        command += ["--tensor-parallel-size", str(settings.gpu_count)]
    if settings.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if settings.max_model_len is not None:
        command += ["--max-model-len", str(settings.max_model_len)]
    if settings.max_num_seqs is not None:
        command += ["--max-num-seqs", str(settings.max_num_seqs)]
    return command + engine_flags(settings.engine_args)


def engine_environment(settings: AgentSettings) -> dict[str, str]:
    """The engine's environment: the agent's, without the agent's secrets. The hub token and the
    engine's API key are handed over under the names vLLM reads (HF_TOKEN, VLLM_API_KEY): in the
    environment, not on the command line, where any local user's `ps` would show the key."""
    env = {key: value for key, value in os.environ.items() if key not in _AGENT_SECRETS}
    hub_token = settings.hf_token.get_secret_value()
    if hub_token and "HF_TOKEN" not in env:
        env["HF_TOKEN"] = hub_token
    if engine_key := settings.engine_api_key.get_secret_value():
        env["VLLM_API_KEY"] = engine_key
    return env


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the agent dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _stream_lines(stream: asyncio.StreamReader) -> None:
    """Copies the engine's output into the agent's log, line by line; very long lines (vLLM
    prints whole configs) are cut into pieces rather than failing the reader."""
    pending = b""
    while chunk := await stream.read(1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:
            lines.append(pending)
            pending = b""
        for line in lines:
            engine_log.info("%s", line.decode(errors="replace").rstrip())
    if pending:
        engine_log.info("%s", pending.decode(errors="replace").rstrip())


class EngineSupervisor:
    """Keeps one engine process alive. `prepare` (the model download) runs once before the
    first start, retried with the same backoff until it succeeds; it returns the model path to
    serve, or None for the configured model."""

    def __init__(
        self,
        settings: AgentSettings,
        prepare: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.settings = settings
        self._prepare = prepare
        self.state = EngineState.stopped
        self.restarts = 0
        self.consecutive_failures = 0
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.command: list[str] = build_engine_command(settings)

    @property
    def crash_loop(self) -> bool:
        """Quick exits in a row reached the threshold, and the current run is not yet stable."""
        if self.pid is not None and self.started_at is not None:
            if time.monotonic() - self.started_at >= self.settings.engine_stable_s:
                return False
        return self.consecutive_failures >= self.settings.crash_loop_threshold

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    async def _run(self) -> None:
        model_path: str | None = None
        failures = 0
        while self._prepare is not None and not self._stopping:
            self.state = EngineState.preparing
            try:
                model_path = await self._prepare()
                break
            except Exception as exc:
                failures += 1
                self.state = EngineState.failed
                self.last_error = f"model preparation failed: {exc}"
                delay = self._backoff(failures)
                log.error("%s; trying again in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
        self.command = build_engine_command(self.settings, model_path)
        while not self._stopping:
            try:
                await self._run_once()
            except OSError as exc:
                self.state = EngineState.failed
                self.last_error = f"cannot start the engine ({self.command[0]}): {exc}"
                log.error("%s", self.last_error)
                return
            except Exception:
                # a bug here must not leave the engine unwatched: count it as a failed run
                log.exception("engine supervision failed; restarting the engine")
                await self._kill_group()
                self.pid = None
                self.consecutive_failures += 1
            if self._stopping:
                break
            self.restarts += 1
            self.state = EngineState.crash_loop if self.crash_loop else EngineState.backoff
            delay = self._backoff(self.consecutive_failures)
            log.warning(
                "engine exited with code %s (restart %d%s); restarting in %.1fs",
                self.last_exit_code,
                self.restarts,
                ", crash loop" if self.crash_loop else "",
                delay,
            )
            await asyncio.sleep(delay)
        self.state = EngineState.stopped

    def _backoff(self, failures: int) -> float:
        return float(
            min(
                self.settings.restart_backoff_max_s,
                self.settings.restart_backoff_s * 2 ** max(0, failures - 1),
            )
        )

    async def _run_once(self) -> None:
        log.info("starting engine: %s", shlex.join(self.command))
        self.state = EngineState.starting
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its workers too
            preexec_fn=_die_with_parent,
            env=engine_environment(self.settings),
        )
        self.pid = self._process.pid
        self.started_at = time.monotonic()
        assert self._process.stdout is not None
        await _stream_lines(self._process.stdout)
        self.last_exit_code = await self._process.wait()
        await self._kill_group()  # workers the engine left behind
        ran_for = time.monotonic() - self.started_at
        if ran_for >= self.settings.engine_stable_s:
            self.consecutive_failures = 1
        else:
            self.consecutive_failures += 1
        self.last_error = f"engine exited with code {self.last_exit_code} after {ran_for:.1f}s"
        self.pid = None

    async def _kill_group(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            if self._process.returncode is None:
                await self._process.wait()

    def mark_running(self) -> None:
        """The engine answered with the model: it is up (called by readiness probes)."""
        if self.state == EngineState.starting:
            self.state = EngineState.running

    async def stop(self) -> None:
        """Stops the engine's whole process group: SIGTERM, then SIGKILL after the grace time."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            log.info("stopping engine (pid %d)", process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.settings.engine_stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = EngineState.stopped
