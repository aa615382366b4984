"""The HTTP edge, probed: what each server carrying the gateway's ASGI app does with a client that
breaks the lean server's limits (`gateway.protocols.http_server.ServerLimits`).

    python -m bench.gateway.edges          # lean, uvicorn, granian: a table, ~30 s

Each server gets the same gateway (same stack, same settings, the deadlines shortened to
PROBE_SETTINGS so the probes are quick; granian's header deadline is set from the same
setting) and the same probes, each on fresh connections. An outcome is the status the server
answered with, then whether it closed the connection (`closed`) or kept it (`open`); `no
answer` means it said nothing within the probe's wait. `bench.gateway.run` runs the probes too
when it compares servers, and puts the table in its results.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench.gateway.run import (
    SERVERS,
    Stack,
    free_port,
    granian_path,
    start_gateway,
    stop,
    wait_http,
)

PROBE_SETTINGS = {
    "INVENTIV_GATEWAY_HEADER_TIMEOUT_S": "2",
    "INVENTIV_GATEWAY_BODY_TIMEOUT_S": "2",
    "INVENTIV_GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "16",
}
DEADLINE_WAIT_S = 5.0  # how long the deadline probes wait: beyond the 2 s deadlines above
ANSWER_WAIT_S = 1.5  # how long the other probes wait for an answer
CONNECTIONS = 24  # opened from one address by the per-client probe (the cap is 16 here)

EDGES_NOTE = (
    "Each server carrying the gateway (1 worker, deadlines shortened to 2 s and the per-client "
    "cap to 16 for the probes; granian's header deadline from the same setting), each probe on "
    "fresh connections: the status answered, then whether the server closed the connection; "
    "'no answer' means nothing came within the probe's wait (5 s for the deadlines). "
    "401 is the app's answer to a request without a key: the server let it through."
)

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


async def exchange(port: int, data: bytes, wait_s: float) -> str:
    """Send `data` on a new connection and read for `wait_s`: '<status> closed|open', 'no
    answer, closed|open', or 'reset'."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    closed = False
    deadline = time.monotonic() + wait_s
    try:
        writer.write(data)
        await writer.drain()
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "reset" + (f" after {_status(received)}" if _status(received) else "")
    finally:
        writer.close()
    status = _status(received) or "no answer,"
    return f"{status} {'closed' if closed else 'open'}"


def _status(data: bytes) -> str | None:
    match = _STATUS.match(data)
    return match[1].decode() if match else None


async def per_client(port: int) -> str:
    """CONNECTIONS connections from one address, each asking /healthz: how many were served."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]
    statuses: dict[str, int] = {}
    try:
        for _, writer in conns:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        for reader, _ in conns:
            try:
                head = await asyncio.wait_for(reader.read(4096), ANSWER_WAIT_S)
            except (TimeoutError, ConnectionResetError):
                head = b""
            status = _status(head) or "none"
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        for _, writer in conns:
            writer.close()
    return ", ".join(f"{count} got {status}" for status, count in sorted(statuses.items()))


def probes(key: str) -> list[tuple[str, bytes, float]]:
    """(what, bytes sent, wait): each breaks one of the lean server's limits."""
    chat = b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n" % (
        key.encode()
    )
    many_headers = b"".join(b"X-H%d: x\r\n" % i for i in range(150))
    return [
        (
            "request line of 16 KiB (lean: 8 KiB, 414)",
            b"GET /v1/models?pad=" + b"a" * 16384 + b" HTTP/1.1\r\nHost: bench\r\n\r\n",
            ANSWER_WAIT_S,
        ),
        (
            "150 request headers (lean: 100, 431)",
            b"GET /v1/models HTTP/1.1\r\nHost: bench\r\n" + many_headers + b"\r\n",
            ANSWER_WAIT_S,
        ),
        (
            "header block of 100 KiB (lean: 64 KiB, 431)",
            b"GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Pad: " + b"a" * 102400 + b"\r\n\r\n",
            ANSWER_WAIT_S,
        ),
        (
            "header block of 1 MiB",
            b"GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Pad: " + b"a" * 1048576 + b"\r\n\r\n",
            ANSWER_WAIT_S,
        ),
        (
            "header block never finished (lean: 2 s deadline here, 408)",
            b"GET /healthz HTTP/1.1\r\nHost: bench\r\n",
            DEADLINE_WAIT_S,
        ),
        (
            "body never finished, valid key (lean: 2 s deadline here, 408)",
            chat + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":',
            DEADLINE_WAIT_S,
        ),
    ]


async def probe(port: int, key: str) -> dict[str, str]:
    outcomes = await asyncio.gather(*(exchange(port, data, wait) for _, data, wait in probes(key)))
    found = {what: outcome for (what, _, _), outcome in zip(probes(key), outcomes, strict=True)}
    found[f"{CONNECTIONS} connections from one address (lean: 16 here, 429)"] = await per_client(
        port
    )
    return found


def probe_servers(stack: Stack, servers: list[str], tools_venv: Path) -> dict[str, dict[str, str]]:
    """Each server in turn on the same stack: {server: {probe: outcome}}."""
    granian = granian_path(tools_venv)
    table: dict[str, dict[str, str]] = {}
    for server in servers:
        if server == "granian" and granian is None:
            continue
        port = free_port()
        proc = start_gateway(stack, port, 1, server, granian=granian, settings=PROBE_SETTINGS)
        try:
            asyncio.run(wait_http(f"http://127.0.0.1:{port}/readyz", 60, proc))
            print(f"-- edges: {server}", flush=True)
            table[server] = asyncio.run(probe(port, stack.key))
        except (RuntimeError, TimeoutError, OSError) as exc:
            table[server] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            stop(proc)
    return table


def render(table: dict[str, dict[str, str]]) -> list[str]:
    servers = list(table)
    rows = list(dict.fromkeys(what for found in table.values() for what in found))
    lines = [
        "| probe | " + " | ".join(servers) + " |",
        "|---|" + "---|" * len(servers),
    ]
    for what in rows:
        lines.append(f"| {what} | " + " | ".join(table[s].get(what, "-") for s in servers) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools-venv", type=Path, default=Path("/tmp/bench-venv"))
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="inventiv-bench-edges-"))
    stack = Stack(workdir)
    try:
        upstream_port = free_port()  # nothing listens: the probes never reach an engine
        stack.start(upstream_port)
        table = probe_servers(stack, args.servers.split(","), args.tools_venv)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(render(table)))


if __name__ == "__main__":
    main()
