"""Control-plane identity pinning (issue 17), with real processes: the API and the tunnel endpoint
serve TLS with a self-signed certificate, the enrolment command carries the pin of its key, and
the agent (`python -m agent join`, its own process) talks only to a peer presenting that key.

A wrong pin: the join is refused naming both fingerprints, and the API never sees the request
(the token works afterwards with the right pin). A malformed pin is refused before anything is
sent. No pin: the usual CA verification refuses the self-signed certificate. Then the machine's
tunnel endpoint is replaced by one presenting another key: every reconnection is refused and not
one byte reaches it (the credential least of all); the real endpoint back, the machine
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import select

from activities.providers.tunnel.settings import TunnelSettings
from agent.tunnel import JOIN_PATH, STATE_FILE
from api.app import create_app
from core.embedded import free_port
from core.models import Machine, MachineEnrolment
from core.settings import Settings
from core.wire import certificate_file_pin
from tests.factories import seed
from tests.tunnel.certs import self_signed
from tests.tunnel.helpers import eventually, start_machine, tunnel_settings
from tunnel.server import TunnelServer

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TlsApi:
    """The real API app served over TLS on 127.0.0.1, remembering every HTTP path it was asked."""

    def __init__(self, settings: Settings, cert: Path, key: Path) -> None:
        self.paths: list[str] = []
        inner = create_app(settings)

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.paths.append(scope["path"])
            await inner(scope, receive, send)

        self.server = uvicorn.Server(
            uvicorn.Config(
                recording, host="127.0.0.1", port=settings.api_port, log_level="warning",
                lifespan="on", access_log=False, ssl_certfile=str(cert), ssl_keyfile=str(key),
                timeout_graceful_shutdown=5,
            )
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


class Impostor:
    """A TLS server with a key of its own where the tunnel endpoint was: it records how many
    connections came (TCP) and every byte they sent after the TLS handshake."""

    def __init__(self, tunnel: TunnelSettings, cert: Path, key: Path) -> None:
        self.tunnel = tunnel
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.connections = 0
        self.received = b""
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await writer.start_tls(self.context)
            while chunk := await reader.read(65536):
                self.received += chunk
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.tunnel.host, self.tunnel.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _login(api: httpx.AsyncClient, email: str, password: str) -> None:
    login = await api.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    api.cookies.clear()


def test_the_pin_is_the_spki_hash_openssl_gives(tmp_path: Path) -> None:
    """The pin's format is kubeadm's: what `openssl x509 -pubkey | openssl pkey -pubin -outform
    der | sha256sum` prints, for any certificate file (a full chain: its first certificate)."""
    cert, _, pin = self_signed(tmp_path, "control-plane")
    other, _, _ = self_signed(tmp_path, "intermediate")
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(cert.read_bytes() + other.read_bytes())
    assert certificate_file_pin(cert.read_bytes()) == pin
    assert certificate_file_pin(chain.read_bytes()) == pin
    if shutil.which("openssl") is None:
        pytest.skip("no openssl here to cross-check")
    public = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"], capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=public, capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    assert pin == "sha256:" + hashlib.sha256(der).hexdigest()


async def test_a_machine_talks_only_to_the_pinned_control_plane(
    settings: Settings,
    sessionmaker: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key, pin = self_signed(certs, "control-plane")
    other_cert, other_key, other_pin = self_signed(certs, "impostor")
    port, tunnel_port = settings.api_port, free_port()
    tunnel = tunnel_settings(
        monkeypatch, tls_cert=cert, tls_key=key, port=tunnel_port,
        public_url=f"wss://127.0.0.1:{tunnel_port}",
    )  # fmt: skip
    settings.public_api_url = f"https://127.0.0.1:{port}"
    control_plane = settings.api_url
    async with sessionmaker() as session:
        seeded = await seed(session, provider_kind="tunnel", instance_type="tunnel")

    api_server = TlsApi(settings, cert, key)
    endpoint = TunnelServer(settings, tunnel)  # stop() twice: the second does nothing
    impostor: Impostor | None = None
    machine = None
    await api_server.start()
    await endpoint.start()
    try:
        # the test's own client trusts the certificate as its CA (it is self-signed)
        async with httpx.AsyncClient(
            base_url=control_plane, timeout=30, verify=ssl.create_default_context(cafile=cert)
        ) as api:
            await _login(api, seeded.user.email, seeded.password)
            created = await api.post(
                "/api/v1/machines/enrolments",
                json={"name": "desk-gpu", "project_id": str(seeded.project.id)},
            )
            assert created.status_code == 201, created.text
            enrolment = created.json()
            token = enrolment["token"]
            assert enrolment["pins"] == [pin]
            assert enrolment["command"] == (
                f"python -m agent join --control-plane {control_plane} --token {token} --pin {pin}"
            )
            join_args = shlex.split(enrolment["command"])[3:]

            async def token_unspent() -> bool:
                async with sessionmaker() as session:
                    row = await session.scalar(
                        select(MachineEnrolment).where(
                            MachineEnrolment.id == uuid.UUID(enrolment["id"])
                        )
                    )
                return row is not None and row.used_at is None

            # a wrong pin: refused, naming what it saw and what was pinned; nothing reached the
            # API (not even the request), the token is unspent
            wrong = start_machine(
                tmp_path / "wrong", "join", "--control-plane", control_plane, "--token", token,
                "--pin", other_pin,
            )  # fmt: skip
            assert await asyncio.to_thread(wrong.wait, 30) == 2
            refusal = (tmp_path / "wrong.log").read_text()
            assert f"presents the TLS key {pin}, not the pinned {other_pin}" in refusal, refusal
            assert "the enrolment token was not sent" in refusal and token not in refusal
            assert JOIN_PATH not in api_server.paths
            assert await token_unspent()
            assert not (tmp_path / "wrong" / STATE_FILE).exists()

            # a malformed pin: refused before anything is sent
            for malformed in ("sha256:1234", "md5:" + "0" * 64, pin[len("sha256:") :]):
                bad = start_machine(
                    tmp_path / "bad", "join", "--control-plane", control_plane, "--token",
                    token, "--pin", malformed,
                )  # fmt: skip
                assert await asyncio.to_thread(bad.wait, 30) == 2
            refusal = (tmp_path / "bad.log").read_text()
            assert refusal.count("--pin refused: a pin is sha256:<64 hex digits>") == 3, refusal
            # plain http with a pin: nothing goes in clear
            clear = start_machine(
                tmp_path / "clear", "join", "--control-plane", f"http://127.0.0.1:{port}",
                "--token", token, "--pin", pin,
            )  # fmt: skip
            assert await asyncio.to_thread(clear.wait, 30) == 2
            assert "pinning needs https://" in (tmp_path / "clear.log").read_text()

            # no pin: the usual CA verification, which a self-signed certificate fails
            unpinned = start_machine(
                tmp_path / "unpinned", "join", "--control-plane", control_plane, "--token", token
            )
            assert await asyncio.to_thread(unpinned.wait, 30) == 2
            assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "unpinned.log").read_text()
            assert JOIN_PATH not in api_server.paths
            assert await token_unspent()

            # the enrolment command as given: joins (self-signed, the key matches) and connects
            machine_dir = tmp_path / "machine"
            machine = start_machine(machine_dir, *join_args)

            async def row() -> Machine | None:
                async with sessionmaker() as session:
                    return await session.scalar(select(Machine))

            async def connected() -> bool:
                found = await row()
                return (
                    found is not None
                    and found.connected_at is not None
                    and (
                        found.disconnected_at is None or found.disconnected_at < found.connected_at
                    )
                )

            await eventually(connected, 30, "the machine joined with the pin and connected")
            assert api_server.paths.count(JOIN_PATH) == 1
            assert not await token_unspent()
            state = json.loads((machine_dir / STATE_FILE).read_text())
            assert state["pins"] == [pin] and state["tunnel_url"].startswith("wss://")
            first = await row()
            assert first is not None and first.connected_at is not None

            # the tunnel endpoint is replaced by one presenting another key: each reconnection
            # is refused at the handshake, and not one byte (the credential least of all)
            # reaches it
            await endpoint.stop()
            impostor = Impostor(tunnel, other_cert, other_key)
            await impostor.start()

            async def refused_twice() -> bool:
                log = (tmp_path / "machine.log").read_text()
                return log.count("refusing the tunnel endpoint") >= 2

            await eventually(refused_twice, 30, "two reconnections refused")
            log = (tmp_path / "machine.log").read_text()
            assert f"presents the TLS key {other_pin}, not the pinned {pin}" in log
            assert "the credential was not sent" in log
            assert impostor.connections >= 2
            assert impostor.received == b""
            assert machine.poll() is None  # it keeps trying: the real endpoint may come back
            assert not await connected()
            # the impostor does record what a client sends once its handshake is accepted
            _, writer = await asyncio.open_connection(
                tunnel.host, tunnel.port, ssl=_trust_anything()
            )
            writer.write(b"probe")
            await writer.drain()
            writer.close()
            watching = impostor

            async def probe_recorded() -> bool:
                return watching.received == b"probe"

            await eventually(probe_recorded, 10, "the impostor records what it is sent")
            await impostor.stop()
            impostor = None

            # the real endpoint (the pinned key) back: the machine reconnects by itself
            endpoint = TunnelServer(settings, tunnel)
            await endpoint.start()

            async def reconnected() -> bool:
                found = await row()
                return (
                    await connected()
                    and found is not None
                    and first.connected_at is not None
                    and found.connected_at is not None
                    and found.connected_at > first.connected_at
                )

            await eventually(reconnected, 60, "the machine reconnected to the pinned endpoint")
    finally:
        if machine is not None and machine.poll() is None:
            machine.terminate()
            await asyncio.to_thread(machine.wait, 20)
        if impostor is not None:
            await impostor.stop()
        await endpoint.stop()
        await api_server.stop()


def _trust_anything() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
