"""A machine behind NAT: joins once, then keeps one outbound WebSocket to the control plane.

`python -m agent join --control-plane URL --token TOKEN --pin sha256:HEX` generates an Ed25519
key pair here, trades the one-time token for this machine's credential (`POST
/api/v1/machines/join`) and saves both in the state folder (0600), then connects; `python -m
agent connect` reconnects later.

The pin (`--pin`, repeatable, from the enrolment command; saved in the state) is the SHA-256 of
the control plane's TLS public key (SubjectPublicKeyInfo, `core.wire.public_key_pin`). With one,
every TLS handshake (the join request, each tunnel connection) is checked against it as it ends,
before a byte of HTTP is written: a peer presenting another key is refused, naming both
fingerprints, and neither the token nor the credential leaves; a key that matches is trusted
whoever signed its certificate (a self-signed one too). Without a pin, the usual CA and host name
verification applies (`--ca-file` for a private CA).

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
from dataclasses import asdict, dataclass, field
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
    parse_pin,
    public_key_pin,
    tunnel_data,
)

log = logging.getLogger("agent.tunnel")

STATE_FILE = "machine.json"
JOIN_PATH = "/api/v1/machines/join"


class JoinRefusedError(Exception):
    """The control plane refused to let this machine in; the message says why."""


class PinMismatchError(ssl.SSLCertVerificationError):
    """The peer's TLS key is not a pinned one: the handshake fails before anything is sent."""

    def __init__(self, seen: str, pins: frozenset[str]) -> None:
        self.seen = seen
        self.pins = pins
        pinned = " or ".join(sorted(pins))
        self.message = f"the peer presents the TLS key {seen}, not the pinned {pinned}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PinnedTLS:
    """A client TLS context that trusts exactly the pinned keys: the check runs when the
    handshake completes (the SSL socket of httpx's sync client, the SSL object of asyncio's
    transports), so a mismatch fails the connection before the request is written."""

    def __init__(self, pins: list[str]) -> None:
        self.pins = frozenset(pins)

    def check(self, certificate_der: bytes | None) -> None:
        seen = public_key_pin(certificate_der) if certificate_der else "no certificate"
        if seen not in self.pins:
            raise PinMismatchError(seen, self.pins)

    def context(self) -> ssl.SSLContext:
        pinned = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # the pin replaces CA and host name verification: that is what makes a self-signed
        # certificate acceptable, and a CA-signed one with another key not
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        class _Socket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                super().do_handshake(block)
                pinned.check(self.getpeercert(binary_form=True))

        class _Object(ssl.SSLObject):
            def do_handshake(self) -> None:
                super().do_handshake()
                pinned.check(self.getpeercert(binary_form=True))

        context.sslsocket_class = _Socket
        context.sslobject_class = _Object
        return context


def parse_pins(values: list[str]) -> list[str]:
    """`--pin` values, checked (ValueError naming the expected shape) and without duplicates."""
    pins: list[str] = []
    for value in values:
        pin = parse_pin(value)
        if pin not in pins:
            pins.append(pin)
    return pins


@dataclass
class MachineState:
    machine_id: str
    credential: str
    credential_expires_at: str
    tunnel_url: str
    private_key: str  # raw Ed25519 private key, hex
    previous_credential: str | None = None  # kept until the control plane confirms the new one
    ca_file: str | None = None
    pins: list[str] = field(default_factory=list)  # the control plane's TLS keys, sha256:<hex>

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


def _ssl_context(url: str, ca_file: str | None, pins: list[str]) -> ssl.SSLContext | None:
    if not url.startswith(("https://", "wss://")):
        if pins:  # a pin is a TLS key: sending the secret in clear would ignore it
            raise JoinRefusedError(
                f"{url} is not TLS but the control plane's key is pinned: refusing to send "
                "anything in clear (pinning needs https:// and wss://)"
            )
        return None
    if pins:
        return PinnedTLS(pins).context()
    return ssl.create_default_context(cafile=ca_file)


def _pin_refusal(exc: BaseException) -> PinMismatchError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PinMismatchError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def join(
    control_plane: str,
    token: str,
    folder: Path,
    ca_file: str | None = None,
    pins: list[str] | None = None,
) -> MachineState:
    """Trade the enrolment token for this machine's credential; saves and returns the state.
    With `pins`, the token goes only to a peer presenting one of those TLS keys."""
    pins = list(pins or [])
    url = control_plane.rstrip("/") + JOIN_PATH
    verify: ssl.SSLContext | bool = _ssl_context(url, ca_file, pins) or True
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    try:
        response = httpx.post(
            url, json={"token": token, "public_key": public}, timeout=30, verify=verify
        )
    except httpx.HTTPError as exc:
        refused = _pin_refusal(exc)
        if refused is not None:
            raise JoinRefusedError(
                f"refusing to enrol with {url}: {refused}; the enrolment token was not sent "
                "(check the --pin of the enrolment command, or who answers at that address)"
            ) from None
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
        pins=pins,
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
                except PinMismatchError as exc:
                    # someone else answers there (or the key changed): nothing was sent to it;
                    # keep trying, the real endpoint may come back on that path
                    log.error(
                        "refusing the tunnel endpoint at %s: %s; the credential was not sent "
                        "(if the control plane changed its key, run `python -m agent connect "
                        "--pin <the new pin>`); retrying in %.1f s",
                        self.state.tunnel_url, exc, delay,
                    )  # fmt: skip
                except JoinRefusedError as exc:
                    log.error("%s", exc)
                    return 2
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
            ssl=_ssl_context(url, self.state.ca_file, self.state.pins),
            open_timeout=10,
            ping_interval=10,
            ping_timeout=10,
            max_size=None,
        ) as ws:
            if self.state.pins:  # checked at the handshake already; again before the credential
                tls = ws.transport.get_extra_info("ssl_object")
                PinnedTLS(self.state.pins).check(
                    tls.getpeercert(binary_form=True) if tls is not None else None
                )
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
                # as each read arrives: a size would hold tokens back until it filled
                async for chunk in response.aiter_raw():
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
        command.add_argument(
            "--pin",
            action="append",
            default=[],
            metavar="sha256:HEX",
            help="the control plane's TLS public key, as the enrolment command gives it "
            "(repeatable; replaces CA verification; `connect --pin` replaces the saved pins)",
        )
    args = parser.parse_args(argv)
    try:
        pins = parse_pins(args.pin)
    except ValueError as exc:
        print(f"--pin refused: {exc}; nothing was sent", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "join":
        try:
            state = join(args.control_plane, args.token, args.state_dir, args.ca_file, pins)
        except JoinRefusedError as exc:
            print(exc, file=sys.stderr)
            return 2
        log.info("joined as machine %s; connecting to %s", state.machine_id, state.tunnel_url)
    elif pins:  # the control plane's key changed on purpose: trust the new one from now on
        try:
            saved = MachineState.load(args.state_dir)
        except JoinRefusedError as exc:
            print(exc, file=sys.stderr)
            return 2
        saved.pins = pins
        saved.save(args.state_dir)
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
