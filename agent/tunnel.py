"""A machine behind NAT: joins once, then keeps one outbound WebSocket to the control plane.

`python -m agent join --control-plane URL --token TOKEN` generates an Ed25519 key pair here,
trades the one-time token for this machine's credential (`POST /api/v1/machines/join`) and saves
both in the state folder (0600), then connects; `python -m agent connect` reconnects later.

Over the tunnel (framing in core/wire.py; the other side is tunnel/hub.py) the control plane
says what to run (`run` with the instance's agent environment, `stop`) and relays HTTP to the
agent's own routes (`/healthz`, `/readyz`, `/info`, ...: served in-process, no socket) or to the
engine on loopback; responses go back chunk by chunk. Heartbeats go over the tunnel too. This
process listens on no port: the engine it starts listens on 127.0.0.1 only.

A dropped connection is retried with exponential backoff (jittered); the engine keeps running
meanwhile. A refused credential or a revoked machine ends the process (after stopping the
engine): retrying cannot help.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import socket
import ssl
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.agent import Agent, create_app
from agent.gpu import GpuReader
from agent.settings import AgentSettings
from core.wire import (
    TUNNEL_CLOSE_REFUSED,
    TUNNEL_CLOSE_REVOKED,
    TUNNEL_PATH,
    tunnel_data,
)

log = logging.getLogger("agent.tunnel")

STATE_FILE = "machine.json"
JOIN_PATH = "/api/v1/machines/join"
_CHUNK = 1 << 15


class JoinRefusedError(Exception):
    """The control plane refused to let this machine in; the message says why."""


@dataclass
class MachineState:
    machine_id: str
    credential: str
    credential_expires_at: str
    tunnel_url: str
    private_key: str  # raw Ed25519 private key, hex
    previous_credential: str | None = None  # kept until the control plane confirms the new one
    ca_file: str | None = None

    @classmethod
    def load(cls, folder: Path) -> MachineState:
        path = folder / STATE_FILE
        if not path.exists():
            raise JoinRefusedError(f"{path} does not exist: join first (python -m agent join)")
        return cls(**json.loads(path.read_text()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.chmod(0o600)
        tmp.replace(folder / STATE_FILE)

    @property
    def key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.private_key))


def _ssl_context(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    if not url.startswith(("https://", "wss://")):
        return None
    return ssl.create_default_context(cafile=ca_file)


def join(control_plane: str, token: str, folder: Path, ca_file: str | None = None) -> MachineState:
    """Trade the enrolment token for this machine's credential; saves and returns the state."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    url = control_plane.rstrip("/") + JOIN_PATH
    verify: ssl.SSLContext | bool = _ssl_context(url, ca_file) or True
    try:
        response = httpx.post(
            url, json={"token": token, "public_key": public}, timeout=30, verify=verify
        )
    except httpx.HTTPError as exc:
        raise JoinRefusedError(f"cannot reach the control plane at {url}: {exc}") from None
    if response.status_code != 201:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise JoinRefusedError(f"the control plane refused to enrol this machine: {detail}")
    answer = response.json()
    raw = key.private_bytes_raw().hex()
    state = MachineState(
        machine_id=answer["machine_id"],
        credential=answer["credential"],
        credential_expires_at=answer["credential_expires_at"],
        tunnel_url=answer["tunnel_url"],
        private_key=raw,
        ca_file=ca_file,
    )
    state.save(folder)
    return state


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Workload:
    """The instance this machine runs now: the agent (in-process, no HTTP server) and its engine."""

    def __init__(self, instance_id: str, env: dict[str, str]) -> None:
        self.instance_id = instance_id
        self.env = env
        self._stack = contextlib.AsyncExitStack()
        self._set: list[str] = []
        self.app: FastAPI | None = None
        self.agent: Agent | None = None
        self.local: httpx.AsyncClient | None = None
        self.engine: httpx.AsyncClient | None = None

    async def start(self) -> None:
        overrides = {
            **self.env,
            # the engine listens on loopback only, on a port free here; heartbeats go over the
            # tunnel (the control plane adds the instance's token)
            "INVENTIV_AGENT_ENGINE_HOST": "127.0.0.1",
            "INVENTIV_AGENT_ENGINE_PORT": str(_free_loopback_port()),
            "INVENTIV_AGENT_CONTROL_PLANE_URL": "",
        }
        for name, value in overrides.items():
            os.environ[name] = str(value)  # the engine inherits the flavor's variables
            self._set.append(name)
        settings = AgentSettings()
        self.app = create_app(settings)
        self.agent = self.app.state.agent
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
        self.local = await self._stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://agent")
        )
        self.engine = await self._stack.enter_async_context(
            httpx.AsyncClient(base_url=settings.engine_url, timeout=httpx.Timeout(None, connect=5))
        )
        log.info("running instance %s (engine on %s)", self.instance_id, settings.engine_url)

    async def stop(self) -> None:
        await self._stack.aclose()  # the agent's lifespan stops the engine's process group
        for name in self._set:
            os.environ.pop(name, None)
        log.info("stopped instance %s", self.instance_id)


class MachineAgent:
    def __init__(
        self,
        folder: Path,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        heartbeat_interval_s: float = 5.0,
    ) -> None:
        self.folder = folder
        self.state = MachineState.load(folder)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.workload: Workload | None = None
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._gpus = GpuReader()

    # ------------------------------------------------------------------ connection

    async def run(self) -> int:
        """Stay connected until refused or revoked; returns the process's exit status."""
        commands = asyncio.create_task(self._run_commands())
        heartbeats = asyncio.create_task(self._heartbeats())
        delay = self.backoff_s
        try:
            while True:
                try:
                    await self._connect_once()
                    delay = self.backoff_s  # it was up: start again from the short delay
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    reason = exc.rcvd.reason if exc.rcvd else ""
                    if code in (TUNNEL_CLOSE_REFUSED, TUNNEL_CLOSE_REVOKED):
                        log.error("the control plane closed the tunnel for good: %s", reason)
                        return 3
                    log.warning("tunnel closed (%s %s): reconnecting", code, reason)
                except (OSError, InvalidHandshake, TimeoutError) as exc:
                    log.warning("tunnel unreachable (%r): retrying in %.1f s", exc, delay)
                except InvalidURI as exc:
                    log.error("bad tunnel URL: %s", exc)
                    return 2
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max_s)
        finally:
            for task in (commands, heartbeats, *self._streams.values()):
                task.cancel()
            await self._stop_workload()
            self._gpus.close()

    async def _connect_once(self) -> None:
        url = self.state.tunnel_url.rstrip("/") + TUNNEL_PATH
        async with connect(
            url,
            ssl=_ssl_context(url, self.state.ca_file),
            open_timeout=10,
            ping_interval=10,
            ping_timeout=10,
            max_size=None,
        ) as ws:
            challenge = json.loads(await asyncio.wait_for(ws.recv(), 10))
            nonce = bytes.fromhex(challenge["nonce"])
            offered = [self.state.credential]
            if self.state.previous_credential:
                offered.append(self.state.previous_credential)
            gpus = self._gpus.read() or []
            await ws.send(
                json.dumps(
                    {
                        "type": "hello",
                        "machine_id": self.state.machine_id,
                        "credentials": offered,
                        "signature": self.state.key.sign(nonce).hex(),
                        "running": self.workload.instance_id if self.workload else None,
                        "gpus": [g.model_dump() for g in gpus],
                    }
                )
            )
            self._ws = ws
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        continue  # the control plane sends request bodies inline
                    await self._on_message(json.loads(message))
            finally:
                self._ws = None

    async def _send(self, message: dict[str, Any] | bytes) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("the tunnel is down")
        await ws.send(message if isinstance(message, bytes) else json.dumps(message))

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "welcome":
            self.connections += 1
            used = int(message.get("credential", 0))
            if used == 1 and self.state.previous_credential:  # the new one never reached them
                self.state.credential = self.state.previous_credential
            self.state.previous_credential = None
            self.state.save(self.folder)
            log.info("connected to the control plane as machine %s", self.state.machine_id)
        elif kind == "refused":
            log.error("refused: %s", message.get("reason"))
        elif kind in ("run", "stop"):
            await self._commands.put(message)
        elif kind == "open":
            number = int(message["stream"])
            self._streams[number] = asyncio.create_task(self._serve_stream(message))
        elif kind == "rotate":
            self.state.previous_credential = self.state.credential
            self.state.credential = str(message["credential"])
            self.state.credential_expires_at = str(message["expires_at"])
            self.state.save(self.folder)
            await self._send(
                {"type": "rotated", "credential": self.state.credential,
                 "expires_at": self.state.credential_expires_at}
            )  # fmt: skip

    # ------------------------------------------------------------------ commands

    async def _run_commands(self) -> None:
        while True:
            command = await self._commands.get()
            try:
                if command["type"] == "stop":
                    await self._stop_workload()
                else:
                    instance_id = str(command["instance_id"])
                    env = {str(k): str(v) for k, v in dict(command["env"]).items()}
                    current = self.workload
                    if current is None or (current.instance_id, current.env) != (instance_id, env):
                        await self._stop_workload()
                        workload = Workload(instance_id, env)
                        await workload.start()
                        self.workload = workload
            except Exception:
                log.exception("could not carry out %s", command.get("type"))
            with contextlib.suppress(ConnectionError, ConnectionClosed):
                await self._send(
                    {
                        "type": "status",
                        "running": self.workload.instance_id if self.workload else None,
                    }
                )

    async def _stop_workload(self) -> None:
        workload, self.workload = self.workload, None
        if workload is not None:
            await workload.stop()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            workload = self.workload
            if workload is None or workload.agent is None or self._ws is None:
                continue
            try:
                beat = await workload.agent.heartbeat()
                await self._send({"type": "heartbeat", "body": beat.model_dump_json()})
            except (ConnectionError, ConnectionClosed):
                continue
            except Exception:
                log.exception("could not send a heartbeat")

    # ------------------------------------------------------------------ relayed HTTP

    async def _serve_stream(self, message: dict[str, Any]) -> None:
        number = int(message["stream"])
        try:
            workload = self.workload
            client = None
            if workload is not None:
                client = workload.local if message.get("target") == "agent" else workload.engine
            if client is None:
                body = json.dumps({"error": {"message": "no instance runs on this machine"}})
                await self._send({"type": "response", "stream": number, "status": 503,
                                  "headers": [["content-type", "application/json"]]})  # fmt: skip
                await self._send(tunnel_data(number, body.encode(), end=True))
                return
            request = client.build_request(
                str(message["method"]),
                str(message["path"]),
                headers=[(str(k), str(v)) for k, v in message.get("headers", [])],
                content=base64.b64decode(message.get("body_b64") or ""),
            )
            response = await client.send(request, stream=True)
            try:
                await self._send(
                    {"type": "response", "stream": number, "status": response.status_code,
                     "headers": [[k, v] for k, v in response.headers.multi_items()]}
                )  # fmt: skip
                async for chunk in response.aiter_raw(_CHUNK):
                    await self._send(tunnel_data(number, chunk))
                await self._send(tunnel_data(number, b"", end=True))
            finally:
                await response.aclose()
        except (ConnectionError, ConnectionClosed):
            pass  # the tunnel dropped: the control plane fails the request on its side
        except Exception as exc:
            with contextlib.suppress(ConnectionError, ConnectionClosed):
                await self._send({"type": "reset", "stream": number, "error": repr(exc)[:300]})
        finally:
            self._streams.pop(number, None)


def default_state_dir() -> Path:
    return Path(os.environ.get("INVENTIV_MACHINE_DIR", Path.home() / ".inventiv-machine"))


def main(argv: list[str]) -> int:
    """`join` and `connect` subcommands of `python -m agent`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent")
    sub = parser.add_subparsers(dest="command", required=True)
    joining = sub.add_parser("join", help="enrol this machine with a one-time token, then connect")
    joining.add_argument("--control-plane", required=True, help="the API's URL")
    joining.add_argument("--token", required=True, help="the one-time enrolment token")
    connecting = sub.add_parser("connect", help="connect a machine that already joined")
    for command in (joining, connecting):
        command.add_argument("--state-dir", type=Path, default=default_state_dir())
        command.add_argument("--ca-file", help="CA bundle that signs the control plane's TLS")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "join":
        try:
            state = join(args.control_plane, args.token, args.state_dir, args.ca_file)
        except JoinRefusedError as exc:
            print(exc, file=sys.stderr)
            return 2
        log.info("joined as machine %s; connecting to %s", state.machine_id, state.tunnel_url)
    try:
        agent = MachineAgent(args.state_dir)
    except JoinRefusedError as exc:
        print(exc, file=sys.stderr)
        return 2
    return asyncio.run(_until_signalled(agent))


async def _until_signalled(agent: MachineAgent) -> int:
    """SIGTERM or SIGINT: stop the engine, then exit (the engine dies with us otherwise too)."""
    import signal

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel if task else (lambda: None))
    try:
        return await agent.run()
    except asyncio.CancelledError:
        return 0
