"""The control plane's side of the machine tunnel: one WebSocket per machine, HTTP relayed over it.

A machine dials `TUNNEL_PATH` (agent/tunnel.py). The hub sends a nonce; the machine answers with
its id, credential and an Ed25519 signature of the nonce by the key it generated at enrolment.
Refused: close code `TUNNEL_CLOSE_REFUSED`, with the reason. Accepted: the machine's row records
the connection and its relay URL, and the hub sends what the machine should run.

Over the connection (core/wire.py has the framing):
- hub -> machine: `run` {instance_id, env} / `stop` (from the machine's row, written by the
  `tunnel` provider), `open` {stream, target: agent|engine, method, path, headers, body_b64},
  `rotate` {credential, expires_at}, `ping`.
- machine -> hub: `response` {stream, status, headers} then binary data frames (the body, chunk
  by chunk), `reset` {stream, error}, `status` {running}, `heartbeat` {body} (relayed to the API
  with the instance's token, so the machine never holds it), `rotated`.

The relay (`relay`, an ASGI app on a private address) maps `/m/<machine id>/<target>/<path>` to a
stream on that machine's connection and streams the response back as it arrives; a machine not
connected here answers 503. A sync loop re-reads the connected machines every `sync_interval_s`:
a revoked machine is cut (close code `TUNNEL_CLOSE_REVOKED`) within that period, claims become
run/stop commands, credentials are rotated when a third of their life is left, GPU time is
charged per local day, and a machine whose owner's slot or quota is ending is drained.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from activities.providers.tunnel.settings import TunnelSettings
from core.machine_sharing import availability, parse_sharing, split_by_local_day
from core.models import Instance, Machine, MachineUsage, utcnow
from core.settings import Settings
from core.tokens import agent_token, engine_api_key, new_machine_credential, token_hash
from core.wire import TUNNEL_CLOSE_REFUSED, TUNNEL_CLOSE_REVOKED, parse_tunnel_data

log = logging.getLogger("tunnel")

# Drains an instance (its workflow id); the CLI hands one from workflows/client.py.
Drain = Callable[[str], Awaitable[bool]]
Clock = Callable[[], datetime]
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"host"}


class StreamFailed(Exception):
    """The machine could not answer this request (reset by it, or the tunnel dropped)."""


class _Stream:
    def __init__(self) -> None:
        self.head: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[bytes | StreamFailed | None] = asyncio.Queue()

    def fail(self, error: str) -> None:
        if not self.head.done():
            self.head.set_exception(StreamFailed(error))
        self.chunks.put_nowait(StreamFailed(error))


class MachineConnection:
    """One machine's WebSocket: control messages and multiplexed HTTP streams."""

    def __init__(self, machine_id: uuid.UUID, ws: WebSocket) -> None:
        self.machine_id = machine_id
        self.ws = ws
        self.streams: dict[int, _Stream] = {}
        self._next = 0
        self._send_lock = asyncio.Lock()
        self.sent_run: tuple[str, str] | None = None  # (instance id, env digest) last sent
        self.running: str | None = None  # what the machine says it runs
        self.draining: str | None = None  # the instance a drain was asked for
        self.closed = asyncio.Event()

    async def send(self, message: dict[str, Any] | bytes) -> None:
        async with self._send_lock:
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_text(json.dumps(message))

    async def open(
        self, target: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """Send one request; the response head, then its body chunk by chunk."""
        self._next += 1
        number = self._next
        stream = self.streams[number] = _Stream()
        try:
            await self.send(
                {
                    "type": "open", "stream": number, "target": target, "method": method,
                    "path": path, "headers": headers, "body_b64": base64.b64encode(body).decode(),
                }
            )  # fmt: skip
            head = await stream.head
        except BaseException:
            self.streams.pop(number, None)
            raise

        async def body_chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    item = await stream.chunks.get()
                    if isinstance(item, StreamFailed):
                        raise item
                    if item is None:
                        return
                    yield item
            finally:
                self.streams.pop(number, None)

        return head, body_chunks()

    def on_data(self, frame: bytes) -> None:
        number, end, chunk = parse_tunnel_data(frame)
        stream = self.streams.get(number)
        if stream is None:
            return  # a stream the relay gave up on
        if chunk:
            stream.chunks.put_nowait(chunk)
        if end:
            stream.chunks.put_nowait(None)

    def fail_all(self, error: str) -> None:
        for stream in list(self.streams.values()):
            stream.fail(error)


def _connected_now(machine: Machine) -> bool:
    return machine.connected_at is not None and (
        machine.disconnected_at is None or machine.disconnected_at < machine.connected_at
    )


class TunnelHub:
    def __init__(
        self,
        settings: Settings,
        tunnel: TunnelSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        drain: Drain | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.tunnel = tunnel
        self.sessionmaker = sessionmaker
        self.drain = drain
        self.clock = clock
        self.connections: dict[uuid.UUID, MachineConnection] = {}
        self.http = httpx.AsyncClient(timeout=10)
        self._charged_at: dict[uuid.UUID, datetime] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(1001, "tunnel endpoint stopping")
        await self.http.aclose()

    # ------------------------------------------------------------------ the endpoint

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: the WebSocket machines dial."""
        if scope["type"] != "websocket":
            body = b"the machine tunnel: dial it with `python -m agent join`"
            await send({"type": "http.response.start", "status": 426, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        try:
            conn = await self._authenticate(ws)
        except WebSocketDisconnect:
            return
        if conn is None:
            return
        try:
            await self._serve(conn)
        finally:
            conn.closed.set()
            conn.fail_all("the machine's tunnel dropped")
            if self.connections.get(conn.machine_id) is conn:
                del self.connections[conn.machine_id]
                self._charged_at.pop(conn.machine_id, None)
                async with self.sessionmaker() as session:
                    await session.execute(
                        update(Machine)
                        .where(col(Machine.id) == conn.machine_id)
                        .values(disconnected_at=utcnow())
                    )
                    await session.commit()
            log.info("machine %s disconnected", conn.machine_id)

    async def _refuse(self, ws: WebSocket, code: int, reason: str) -> None:
        log.warning("refused a machine: %s", reason)
        await ws.send_text(json.dumps({"type": "refused", "reason": reason}))
        await ws.close(code, reason[:120])

    async def _authenticate(self, ws: WebSocket) -> MachineConnection | None:
        nonce = secrets.token_bytes(32)
        await ws.send_text(json.dumps({"type": "challenge", "nonce": nonce.hex()}))
        try:
            hello = json.loads(await asyncio.wait_for(ws.receive_text(), 10))
            machine_id = uuid.UUID(str(hello["machine_id"]))
            offered = [str(c) for c in hello["credentials"]][:2]
            signature = bytes.fromhex(str(hello["signature"]))
        except (TimeoutError, ValueError, KeyError, TypeError):
            await self._refuse(ws, TUNNEL_CLOSE_REFUSED, "expected a hello with id and credential")
            return None
        async with self.sessionmaker() as session:
            machine = await session.get(Machine, machine_id)
        matched = next(
            (
                n
                for n, credential in enumerate(offered)
                if machine is not None
                and hmac.compare_digest(token_hash(credential), machine.credential_hash)
            ),
            None,
        )
        if machine is None or matched is None:
            await self._refuse(ws, TUNNEL_CLOSE_REFUSED, "unknown machine or wrong credential")
            return None
        if machine.revoked_at is not None:
            await self._refuse(ws, TUNNEL_CLOSE_REVOKED, "this machine was revoked")
            return None
        if machine.credential_expires_at <= self.clock():
            await self._refuse(
                ws, TUNNEL_CLOSE_REFUSED, "the machine's credential expired: enrol it again"
            )
            return None
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(machine.public_key)).verify(
                signature, nonce
            )
        except (InvalidSignature, ValueError):
            await self._refuse(
                ws, TUNNEL_CLOSE_REFUSED, "signature does not match the machine's key"
            )
            return None
        conn = MachineConnection(machine_id, ws)
        conn.running = hello.get("running")
        previous = self.connections.get(machine_id)
        self.connections[machine_id] = conn
        if previous is not None:  # the newest connection wins (the old one is a dead link)
            with contextlib.suppress(Exception):
                await previous.ws.close(1000, "replaced by a new connection")
        peer = ws.client.host if ws.client else None
        gpus = hello.get("gpus") or []
        now = utcnow()
        async with self.sessionmaker() as session:
            await session.execute(
                update(Machine)
                .where(col(Machine.id) == machine_id)
                .values(
                    connected_at=now,
                    last_seen_at=now,
                    remote_address=peer,
                    relay_url=f"{self.tunnel.relay_base}/m/{machine_id}",
                    running_instance=conn.running,
                    gpu_inventory=gpus if isinstance(gpus, list) else [],
                    gpu_count=len(gpus) if isinstance(gpus, list) else 0,
                )
            )
            await session.commit()
        await conn.send({"type": "welcome", "machine_id": str(machine_id), "credential": matched})
        log.info("machine %s (%s) connected from %s", machine.name, machine_id, peer)
        await self._sync_one(conn)
        return conn

    async def _serve(self, conn: MachineConnection) -> None:
        while True:
            message = await conn.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                with contextlib.suppress(ValueError):
                    conn.on_data(message["bytes"])
                continue
            try:
                data = json.loads(message.get("text") or "")
                kind = data["type"]
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "response":
                stream = conn.streams.get(int(data["stream"]))
                if stream is not None and not stream.head.done():
                    stream.head.set_result(data)
            elif kind == "reset":
                stream = conn.streams.get(int(data["stream"]))
                if stream is not None:
                    stream.fail(str(data.get("error", "reset by the machine")))
            elif kind == "status":
                conn.running = data.get("running")
                await self._record(conn.machine_id, running_instance=conn.running)
            elif kind == "heartbeat":
                task = asyncio.create_task(self._relay_heartbeat(conn, data))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif kind == "rotated":
                await self._record(
                    conn.machine_id,
                    credential_hash=token_hash(str(data["credential"])),
                    credential_expires_at=datetime.fromisoformat(str(data["expires_at"])),
                )
                log.info("machine %s rotated its credential", conn.machine_id)

    async def _record(self, machine_id: uuid.UUID, **values: Any) -> None:
        async with self.sessionmaker() as session:
            await session.execute(
                update(Machine).where(col(Machine.id) == machine_id).values(**values)
            )
            await session.commit()

    async def _relay_heartbeat(self, conn: MachineConnection, data: dict[str, Any]) -> None:
        """To the API, with the instance's token: only for the instance claiming this machine."""
        try:
            body = json.loads(str(data["body"]))
            instance_id = str(body["instance_id"])
        except (ValueError, KeyError, TypeError):
            return
        async with self.sessionmaker() as session:
            machine = await session.get(Machine, conn.machine_id)
        if machine is None or str(machine.claimed_by) != instance_id:
            return  # a machine speaks only for the instance it serves
        token = agent_token(self.settings.require("secret_key"), instance_id)
        try:
            await self.http.post(
                f"{self.settings.api_url}/api/v1/agents/heartbeat",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            log.warning("could not relay a heartbeat of machine %s: %r", conn.machine_id, exc)
        await self._record(conn.machine_id, last_seen_at=utcnow())

    # ------------------------------------------------------------------ the sync loop

    async def sync_forever(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("tunnel sync failed; retrying")
            await asyncio.sleep(self.tunnel.sync_interval_s)

    async def sync(self) -> None:
        for conn in list(self.connections.values()):
            await self._sync_one(conn)

    async def _sync_one(self, conn: MachineConnection) -> None:
        async with self.sessionmaker() as session:
            machine = await session.get(Machine, conn.machine_id)
            if machine is None or machine.revoked_at is not None:
                log.warning("machine %s revoked: cutting its tunnel", conn.machine_id)
                with contextlib.suppress(Exception):
                    await conn.send({"type": "refused", "reason": "this machine was revoked"})
                    await conn.ws.close(TUNNEL_CLOSE_REVOKED, "this machine was revoked")
                return
            await self._charge(session, machine, conn)
            instance = (
                await session.get(Instance, machine.claimed_by) if machine.claimed_by else None
            )
        wanted = (
            (str(machine.claimed_by), json.dumps(machine.desired_env, sort_keys=True))
            if machine.claimed_by and machine.desired_env
            else None
        )
        if wanted != conn.sent_run:
            if wanted is None:
                await conn.send({"type": "stop"})
            else:
                # The engine's key is derived here, at send time, so it is never stored in the row.
                engine_key = engine_api_key(self.settings.require("secret_key"), wanted[0])
                env = {**(machine.desired_env or {}), "INVENTIV_AGENT_ENGINE_API_KEY": engine_key}
                await conn.send({"type": "run", "instance_id": wanted[0], "env": env})
            conn.sent_run = wanted
        left = machine.credential_expires_at - self.clock()
        if left < timedelta(seconds=self.tunnel.credential_ttl_s / 3):
            expires = self.clock() + timedelta(seconds=self.tunnel.credential_ttl_s)
            await conn.send(
                {
                    "type": "rotate",
                    "credential": new_machine_credential(),
                    "expires_at": expires.isoformat(),
                }
            )
        if instance is not None:
            await self._drain_if_due(session, machine, instance, conn)

    async def _charge(
        self, session: AsyncSession, machine: Machine, conn: MachineConnection
    ) -> None:
        """GPU time the machine served since the last sync, charged to its local days."""
        now = self.clock()
        since = self._charged_at.get(machine.id, now)
        self._charged_at[machine.id] = now
        serving = machine.claimed_by is not None and conn.running == str(machine.claimed_by)
        lent = (
            machine.gpu_count
            if machine.quota_gpus is None
            else min(machine.gpu_count, machine.quota_gpus)
        )
        if not serving or lent <= 0 or now <= since:
            return
        tz = parse_sharing(machine.timezone, [], None, None).tz
        for day, seconds in split_by_local_day(since, now, tz):
            statement = insert(MachineUsage).values(
                machine_id=machine.id, day=day, gpu_seconds=seconds * lent
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["machine_id", "day"],
                    set_={"gpu_seconds": MachineUsage.gpu_seconds + statement.excluded.gpu_seconds},
                )
            )
        await session.commit()

    async def _drain_if_due(
        self, session: AsyncSession, machine: Machine, instance: Instance, conn: MachineConnection
    ) -> None:
        if self.drain is None or conn.draining == str(instance.id):
            return
        sharing = parse_sharing(
            machine.timezone, machine.slots, machine.quota_gpus, machine.quota_gpu_hours_per_day
        )
        now = self.clock()
        async with self.sessionmaker() as fresh:
            usage = await fresh.get(
                MachineUsage, (machine.id, now.astimezone(sharing.tz).date().isoformat())
            )
        used = usage.gpu_seconds / 3600 if usage else 0.0
        verdict = availability(
            sharing, now=now, gpus=machine.gpu_count, used_gpu_hours_today=used,
            lead=timedelta(seconds=self.tunnel.drain_lead_s),
        )  # fmt: skip
        if verdict.available:
            return
        log.info(
            "draining instance %s on machine %s: %s", instance.id, machine.name, verdict.reason
        )
        if await self.drain(instance.workflow_id):
            conn.draining = str(instance.id)

    # ------------------------------------------------------------------ the relay

    async def relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: `/m/<machine id>/<agent|engine>/<path>` over that machine's tunnel."""
        if scope["type"] != "http":
            return
        parts = scope["path"].split("/", 4)  # "", "m", id, target, rest
        conn = None
        if len(parts) >= 4 and parts[1] == "m" and parts[3] in ("agent", "engine"):
            with contextlib.suppress(ValueError):
                conn = self.connections.get(uuid.UUID(parts[2]))
        if conn is None:
            known = len(parts) >= 4 and parts[1] == "m"
            await _answer(
                send,
                503 if known else 404,
                "machine not connected" if known else "no such relay path",
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = "/" + (parts[4] if len(parts) > 4 else "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode()
        headers = [
            (k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP
        ]
        try:
            head, chunks = await conn.open(parts[3], scope["method"], path, headers, bytes(body))
        except StreamFailed as exc:
            await _answer(send, 502, f"machine did not answer: {exc}")
            return
        await send(
            {
                "type": "http.response.start",
                "status": int(head["status"]),
                "headers": [
                    (str(k).encode(), str(v).encode())
                    for k, v in head.get("headers", [])
                    if str(k).lower().encode() not in _HOP_BY_HOP | {b"content-length"}
                ],
            }
        )
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except StreamFailed:
            return  # the connection closes mid-body: the client sees a truncated response
        await send({"type": "http.response.body", "body": b""})


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"error": {"message": detail, "type": "tunnel"}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
