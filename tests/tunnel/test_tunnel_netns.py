"""A machine the control plane cannot reach, for real: its agent runs in a network namespace
(made here, as root) whose only way out is a veth pair to the host with a default route through
it, so nothing inside can be dialled except what it listens on, and this test checks that that
is loopback alone. The control plane (API, tunnel endpoint) listens on the host's end of the
veth; the gateway and the relay stay on loopback. The machine enrols with a one-time token,
connects, becomes ready through the lifecycle workflow, serves plain and streamed completions
through the gateway via the tunnel, survives its link going down with requests in flight (they
fail cleanly, within the tunnel's keepalive, never hang), reconnects by itself and serves again,
and is drained before its owner's time slot ends (simulated time, as in
test_tunnel_lifecycle.py). Skipped, with the reason, where no namespace can be made (not root,
no `ip` command, no permission); test_tunnel_e2e.py covers that case with an agent that has no
listening socket at all.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from activities.providers.tunnel.adapter import TunnelCompute
from api.app import create_app
from core.embedded import free_port
from core.models import Machine, TerminationReason, utcnow
from core.settings import Settings
from gateway.app import create_app as create_gateway
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.tunnel.helpers import ROOT, eventually, listening_sockets, tunnel_settings
from tests.workflows.helpers import running_worker
from tunnel.server import TunnelServer
from workflows.client import drain_if_accepted

MODEL = "netns-model"
AGENT_PORT = 8090  # AgentSettings.port: where `python -m agent` would listen (the tunnel: never)
ENGINE_PORT = 8000  # AgentSettings.engine_port's default (the tunnel picks a free one)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Namespace:
    name: str
    host_if: str  # the host's end of the veth pair
    ns_if: str  # the namespace's end
    host_ip: str
    ns_ip: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str) -> str:
        done = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def listening(self) -> list[tuple[str, str, int]]:
        """(tcp|udp, address, port) of every listening socket in the namespace."""
        found = []
        for proto, flag in (("tcp", "-t"), ("udp", "-u")):
            for line in self.run("ss", "-Hln", flag).splitlines():
                local = line.split()[3]  # State Recv-Q Send-Q Local:Port Peer:Port
                address, _, port = local.rpartition(":")
                found.append((proto, address.strip("[]").split("%")[0], int(port)))
        return found


def _free_subnet() -> tuple[str, str]:
    """A /30 in 10.213.0.0/16 no interface here uses: (host end, namespace end)."""
    used = _ip("-4", "-o", "addr", "show").stdout
    for _ in range(100):
        third, block = random.randrange(256), random.randrange(64) * 4
        prefix = f"10.213.{third}."
        if not any(f"{prefix}{block + n}/" in used for n in range(4)):
            return f"{prefix}{block + 1}", f"{prefix}{block + 2}"
    raise AssertionError("no free /30 in 10.213.0.0/16")


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A namespace with a veth pair to the host (default route through it), removed afterwards
    with whatever still runs in it, whether the test passed or not."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (Debian's iproute2: make system-deps installs it)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (the test creates one with `ip netns add`)")
    tag = uuid.uuid4().hex[:8]
    ns = Namespace(f"inv-{tag}", f"vh{tag}", f"vn{tag}", *_free_subnet())
    made = _ip("netns", "add", ns.name)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        steps = [
            ("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if),
            ("link", "set", ns.ns_if, "netns", ns.name),
            ("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if),
            ("link", "set", ns.host_if, "up"),
            ("-n", ns.name, "link", "set", "lo", "up"),
            ("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if),
            ("-n", ns.name, "link", "set", ns.ns_if, "up"),
            ("-n", ns.name, "route", "add", "default", "via", ns.host_ip),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the namespace (ip {' '.join(step)}): {done.stderr}")
        entered = subprocess.run(ns.cmd("true"), capture_output=True, text=True, timeout=30)
        if entered.returncode != 0:
            pytest.skip(f"cannot enter a network namespace here: {entered.stderr.strip()}")
        yield ns
    finally:
        for pid in _ip("netns", "pids", ns.name).stdout.split():  # only what this test started
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        _ip("netns", "del", ns.name)  # takes its end of the pair, and with it the host's
        _ip("link", "del", ns.host_if)


class ReachableServer(RunningServer):
    """RunningServer on loopback and also on `extra_host` (same port): the API, which the worker
    and the tunnel endpoint reach on loopback and the machine on the veth."""

    def __init__(self, app: Any, port: int, extra_host: str) -> None:
        super().__init__(app, port)
        self.hosts = ["127.0.0.1", extra_host]

    async def start(self) -> None:
        sockets = []
        for host in self.hosts:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.port))
            sockets.append(sock)
        self.task = asyncio.create_task(self.server.serve(sockets=sockets))
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)


@dataclass
class SimulatedClock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def _refused_from_outside(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except OSError:  # refused by the namespace's kernel (nothing listens there), or no route
        return True


async def _state(api: httpx.AsyncClient, instance_id: str, state: str, timeout: float) -> dict:
    detail: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal detail
        detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
        return detail["state"] == state

    try:
        await eventually(reached, timeout, f"instance {instance_id} {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last: {detail})") from None
    return detail


async def _chat(client: openai.AsyncOpenAI) -> tuple[str, list[str]]:
    reply = await client.chat.completions.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hello from outside"}]
    )
    stream = await client.chat.completions.create(
        model=MODEL, stream=True, max_tokens=8,
        messages=[{"role": "user", "content": "Stream please"}],
    )  # fmt: skip
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return reply.choices[0].message.content or "", pieces


async def test_an_unreachable_machine_serves_through_the_tunnel_survives_its_link_and_drains(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    namespace: Namespace,
) -> None:
    # The link is down for up to the tunnel's keepalive (10 s ping + 10 s timeout) plus the
    # agent's reconnection backoff: shorter than the health loop's deadline, which is the
    # subject of test_tunnel_lifecycle.py, not of this test.
    # Health checks 30 s apart: on a loaded machine the link is down long enough for three
    # 1-second checks to replace the instance, which this test asserts is not replaced.
    settings = settings.model_copy(update={"heartbeat_fresh_s": 120, "health_interval_s": 30})
    host = namespace.host_ip
    port = free_port()
    tunnel = tunnel_settings(
        monkeypatch, host=host, port=port, public_url=f"ws://{host}:{port}", drain_lead_s=600
    )
    clock = SimulatedClock()
    now = utcnow()
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    slot = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    slot_ends_at = end.replace(second=0, microsecond=0)
    async with sessionmaker() as session:
        seeded = await seed(
            session, provider_kind="tunnel", instance_type="tunnel", model=MODEL,
            engine_args={"model-load-delay-s": 0.2, "inter-token-latency-s": 0.1},
        )  # fmt: skip
    assert settings.database_url
    compute = TunnelCompute(tunnel, settings.database_url, clock=clock)
    api_server = ReachableServer(create_app(settings), settings.api_port, host)
    gateway_server = RunningServer(create_gateway(settings), settings.gateway_port)
    drained: list[str] = []

    async def drain(workflow_id: str) -> bool:  # as `inventiv tunnel` does
        drained.append(workflow_id)
        return await drain_if_accepted(temporal_client, workflow_id, TerminationReason.scale_down)

    endpoint = TunnelServer(settings, tunnel, drain=drain, clock=clock)
    machine_dir = tmp_path / "machine"
    log_path = tmp_path / "machine.log"
    agent: subprocess.Popen[bytes] | None = None
    async with running_worker(settings, temporal_client, {"tunnel": compute}):
        await api_server.start()
        await gateway_server.start()
        await endpoint.start()
        try:
            async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as api:
                login = await api.post(
                    "/api/v1/auth/login",
                    json={"email": seeded.user.email, "password": seeded.password},
                )
                api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
                api.cookies.clear()
                enrolment = await api.post(
                    "/api/v1/machines/enrolments",
                    json={"name": "behind-nat", "project_id": str(seeded.project.id)},
                )
                assert enrolment.status_code == 201, enrolment.text
                token = enrolment.json()["token"]

                # -- the machine, inside the namespace: it dials out, nothing dials in
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "INVENTIV_MACHINE_DIR": str(machine_dir),
                }
                with log_path.open("ab") as log:
                    agent = subprocess.Popen(
                        namespace.cmd(
                            sys.executable, "-m", "agent", "join",
                            "--control-plane", f"http://{host}:{settings.api_port}",
                            "--token", token,
                        ),
                        cwd=ROOT, env=env, stdout=log, stderr=log,
                    )  # fmt: skip
                machine: dict[str, Any] = {}

                async def connected() -> bool:
                    nonlocal machine
                    listed = (await api.get("/api/v1/machines")).json()
                    machine = listed[0] if listed else {}
                    return bool(machine.get("connected"))

                await eventually(connected, 60, "the machine connected from its namespace")
                assert machine["remote_address"] == namespace.ns_ip  # it came from in there
                machine_id = machine["id"]
                shared = await api.put(
                    f"/api/v1/machines/{machine_id}/sharing",
                    json={"timezone": "UTC", "slots": [slot]},
                )
                assert shared.status_code == 200, shared.text

                created = await api.post(f"/api/v1/deployments/{seeded.deployment.id}/instances")
                assert created.status_code == 202, created.text
                instance_id = created.json()["id"]
                ready = await _state(api, instance_id, "ready", 120)
                relay = f"{tunnel.relay_base}/m/"
                assert ready["engine_url"].startswith(relay), ready
                assert ready["agent_url"].startswith(relay), ready

                # -- what an outsider sees: every socket listening in there is on loopback (the
                # engine's), and none of them, nor the agent's or the engine's usual port,
                # answers on the namespace's address
                sockets = namespace.listening()
                assert sockets, "the engine listens on the namespace's loopback"
                assert all(a in ("127.0.0.1", "::1") for _, a, _ in sockets), sockets
                assert listening_sockets(agent.pid) == []  # the agent itself: none at all
                ports = {p for proto, _, p in sockets if proto == "tcp"} | {AGENT_PORT, ENGINE_PORT}
                for p in sorted(ports):
                    assert await asyncio.to_thread(_refused_from_outside, namespace.ns_ip, p), p

                client = openai.AsyncOpenAI(
                    api_key=seeded.api_key, base_url=f"{gateway_server.url}/v1", max_retries=0
                )
                text, pieces = await _chat(client)
                assert text
                assert len([p for p in pieces if p]) >= 2, pieces

                # -- the link goes down with a streamed and a plain request in flight (3000
                # tokens take 300 s: they end because of the drop)
                first_token = asyncio.Event()
                long: list[ChatCompletionMessageParam] = [
                    {"role": "user", "content": "a long answer, please"}
                ]

                async def streamed() -> int:
                    asked = time.monotonic()
                    stream = await client.chat.completions.create(
                        model=MODEL, stream=True, max_tokens=3000, messages=long
                    )
                    count = 0
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            # token by token (0.1 s apart), not held back in a buffer
                            if not count:
                                assert time.monotonic() - asked < 5, "the first token was late"
                            count += 1
                            first_token.set()
                    return count

                async def plain() -> str:
                    reply = await client.chat.completions.create(
                        model=MODEL, max_tokens=3000, messages=long
                    )
                    return reply.choices[0].message.content or ""

                in_flight = [asyncio.create_task(streamed()), asyncio.create_task(plain())]
                await asyncio.wait_for(first_token.wait(), 60)
                await asyncio.sleep(0.5)
                namespace.run("ip", "link", "set", namespace.ns_if, "down")
                dropped_at = time.monotonic()
                # both end within the tunnel's keepalive (10 s ping, 10 s timeout), no hang
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*in_flight, return_exceptions=True), 60
                )
                failed_after = time.monotonic() - dropped_at
                assert failed_after < 45, failed_after
                stream_outcome, plain_outcome = outcomes
                # the plain one had no answer yet: the gateway would retry it on another
                # instance (its rule: once, before the first byte); there is none, so a 502
                assert isinstance(plain_outcome, openai.APIStatusError), repr(plain_outcome)
                assert plain_outcome.status_code == 502, plain_outcome.response.text
                # the stream had begun (too late to retry): it ends with an error event, never
                # with the torn half of one (invalid JSON to the client)
                assert isinstance(stream_outcome, openai.APIError), repr(stream_outcome)
                assert "stream broke" in stream_outcome.message, stream_outcome.message

                async def disconnected() -> bool:
                    row = (await api.get(f"/api/v1/machines/{machine_id}")).json()
                    return not row["connected"]

                await eventually(disconnected, 30, "the control plane saw the machine go")
                await asyncio.sleep(2)
                namespace.run("ip", "link", "set", namespace.ns_if, "up")
                namespace.run("ip", "route", "replace", "default", "via", host)

                async def reconnected() -> bool:
                    async with sessionmaker() as session:
                        row = await session.get(Machine, uuid.UUID(machine_id))
                    return (
                        row is not None
                        and row.disconnected_at is not None
                        and row.connected_at is not None
                        and row.connected_at > row.disconnected_at
                    )

                await eventually(reconnected, 90, "the machine reconnected by itself")

                async def serves_again() -> bool:
                    try:
                        return bool((await _chat(client))[0])
                    except openai.APIError:
                        return False

                await eventually(serves_again, 60, "completions through the new tunnel")
                assert agent.poll() is None
                detail = (await api.get(f"/api/v1/instances/{instance_id}")).json()
                assert detail["state"] == "ready", detail  # the same instance, never replaced
                assert all(a in ("127.0.0.1", "::1") for _, a, _ in namespace.listening())

                # -- its owner's slot is about to end (simulated time): drained, terminated,
                # released before the end, the machine still connected
                assert drained == []
                clock.offset = slot_ends_at - timedelta(minutes=5) - utcnow()
                ended = await _state(api, instance_id, "terminated", 90)
                assert clock() < slot_ends_at
                assert ended["termination_reason"] == TerminationReason.scale_down, ended
                assert drained == [created.json()["workflow_id"]]

                async def released() -> bool:
                    row = (await api.get(f"/api/v1/machines/{machine_id}")).json()
                    return row["claimed_by"] is None and row["connected"]

                await eventually(released, 30, "the machine released, still connected")
                assert agent.poll() is None  # never powered off
        except Exception:
            print(log_path.read_text() if log_path.exists() else "(no machine log)")
            raise
        finally:
            if agent is not None and agent.poll() is None:
                agent.terminate()
                try:
                    await asyncio.to_thread(agent.wait, 20)
                except subprocess.TimeoutExpired:
                    agent.kill()
            await endpoint.stop()
            await gateway_server.stop()
            await api_server.stop()
            await compute.close()
