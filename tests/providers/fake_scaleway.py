"""A local HTTP server speaking the Scaleway Instance and Block Storage APIs' JSON for the calls
the adapter makes, with the rules the real API enforces that matter to cleanup: a running server
cannot be deleted, an attached volume cannot be deleted, deleting a server leaves its volumes
and flexible IPs behind. It records every call so tests can assert what was created and cleaned.

And the behaviours a real account shows that matter to the lifecycle:
- power actions take time: a server stays `starting` / `stopping` for `transition_reads` reads;
- stock is allocated at poweron: types in `no_stock_at_poweron` are refused then, with an
  "out of stock" error; `availability` is what the server-type availability API answers
  (`GET .../products/servers/availability`), and a type in `shortage` is refused at create too;
- block volumes are `creating` for `transition_reads` reads (a server cannot use them yet), then
  `available`, `in_use` once attached, and `deleting` for as many reads after a delete;
- the `terminate` action powers the server off and deletes it with every attached volume,
  local and block (Scaleway's documented semantics); flexible IPs are detached, not deleted;
- the product catalogue (`GET .../products/servers`) lists the types with their hourly prices.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOCAL_STORAGE = {"GPU-3070-S"}
GIB = 1 << 30
# The product catalogue: type -> (hourly EUR, vCPUs, RAM GiB, GPUs, GPU name, GPU memory GiB).
PRODUCTS: dict[str, tuple[float, int, int, int, str | None, int]] = {
    "PRO2-XXS": (0.055, 2, 8, 0, None, 0),
    "GPU-3070-S": (0.98, 8, 16, 1, "RTX-3070", 8),
    "L4-1-24G": (0.75, 8, 48, 1, "L4", 24),
    "L40S-1-48G": (1.4, 8, 96, 1, "L40S", 48),
    "H100-1-80G": (2.73, 24, 240, 1, "H100", 80),
    "H100-2-80G": (5.46, 48, 480, 2, "H100", 80),
}
KNOWN_TYPES = set(PRODUCTS)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeScaleway:
    token: str
    calls: list[Call] = field(default_factory=list)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    ips: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    block_volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_data: dict[tuple[str, str], bytes] = field(default_factory=dict)
    out_of_stock: set[str] = field(default_factory=set)  # refused at create
    no_stock_at_poweron: set[str] = field(default_factory=set)
    availability: dict[str, str] = field(default_factory=dict)  # type -> available|scarce|shortage
    prices: dict[str, float] = field(default_factory=dict)  # overrides PRODUCTS' hourly prices
    transition_reads: int = 2
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    # ---------------------------------------------------------------- what tests look at

    def leftovers(self) -> dict[str, list[str]]:
        """Everything still billed (a volume being deleted is not)."""
        with self.lock:
            self._settle()
            return {
                "servers": list(self.servers),
                "ips": list(self.ips),
                "local_volumes": list(self.local_volumes),
                "block_volumes": [
                    i for i, v in self.block_volumes.items() if v.get("status") != "deleting"
                ],
            }

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for c in self.calls if c.method == method and re.fullmatch(pattern, c.path))

    # ---------------------------------------------------------------- JSON shapes

    def _server_json(self, server: dict[str, Any]) -> dict[str, Any]:
        # A power action completes after a few reads, as the real API's transitional states do.
        if server["state"] in ("starting", "stopping"):
            server["reads_left"] -= 1
            if server["reads_left"] <= 0 and server["state"] == "starting":
                server["state"] = "running"
                server["private_ip"] = f"10.0.0.{len(self.servers) + 2}"
            elif server["reads_left"] <= 0:
                server["state"] = "stopped"
        ips = [self._server_ip(self.ips[i]) for i in server["ip_ids"] if i in self.ips]
        if server["dynamic_ip"]:
            ips.append(server["dynamic_ip"])
        volumes = {}
        for key, (kind, vid) in server["volumes"].items():
            store = self.block_volumes if kind == "sbs_volume" else self.local_volumes
            vol = store.get(vid, {"size": 0})
            volumes[key] = {
                "id": vid,
                "volume_type": kind,
                "boot": key == "0",
                "zone": server["zone"],
                "size": vol.get("size", 0),
                "state": "in_use" if kind == "sbs_volume" else "available",
                "name": vol.get("name"),
            }
        return {
            "id": server["id"],
            "name": server["name"],
            "commercial_type": server["commercial_type"],
            "state": server["state"],
            "tags": server["tags"],
            "zone": server["zone"],
            "project": server["project"],
            "organization": server["project"],
            "creation_date": server["creation_date"],
            "modification_date": _now(),
            "public_ips": ips,
            "public_ip": ips[0] if ips else None,
            "private_ip": server.get("private_ip"),
            "volumes": volumes,
            "image": None,
            "boot_type": "local",
            "arch": "x86_64",
            "dynamic_ip_required": bool(server["dynamic_ip"]),
            "private_nics": server["nics"],
            "allowed_actions": ["poweron", "poweroff", "terminate"],
            "state_detail": server.get("state_detail", ""),
        }

    @staticmethod
    def _server_ip(ip: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": ip["id"],
            "address": ip["address"],
            "gateway": "62.210.0.1",
            "netmask": "32",
            "family": "inet",
            "dynamic": False,
            "provisioning_mode": "dhcp",
            "tags": ip["tags"],
            "ipam_id": ip["id"],
            "state": "attached",
        }

    def _ip_json(self, ip: dict[str, Any]) -> dict[str, Any]:
        server = self.servers.get(ip["server_id"] or "")
        return {
            "id": ip["id"],
            "address": ip["address"],
            "tags": ip["tags"],
            "zone": ip["zone"],
            "project": ip["project"],
            "organization": ip["project"],
            "type": ip["type"],
            "state": "attached" if server else "detached",
            "prefix": ip["address"] + "/32",
            "ipam_id": ip["id"],
            "reverse": None,
            "server": {"id": server["id"], "name": server["name"]} if server else None,
        }

    def _block_status(self, vol: dict[str, Any]) -> str:
        if vol.get("reads_left", 0) > 0:
            vol["reads_left"] -= 1
            return str(vol["status"])
        if vol.get("status") == "deleting":
            return "deleting"  # removed by the read that finds it done (_settle)
        return "in_use" if vol["server_id"] in self.servers else "available"

    def _settle(self) -> None:
        """Volumes whose deletion finished disappear; terminated servers go with theirs."""
        for ident, vol in list(self.block_volumes.items()):
            if vol.get("status") == "deleting" and vol.get("reads_left", 0) <= 0:
                del self.block_volumes[ident]
        for ident, server in list(self.servers.items()):
            if server.get("terminating") and server["state"] == "stopped":
                del self.servers[ident]
                for kind, vid in server["volumes"].values():
                    (self.block_volumes if kind == "sbs_volume" else self.local_volumes).pop(
                        vid, None
                    )
                for ip in self.ips.values():
                    if ip["server_id"] == ident:
                        ip["server_id"] = None

    def _block_json(self, vol: dict[str, Any]) -> dict[str, Any]:
        status = self._block_status(vol)
        refs = []
        if vol["server_id"] in self.servers:
            refs.append(
                {
                    "id": str(uuid.uuid4()),
                    "product_resource_type": "instance_server",
                    "product_resource_id": vol["server_id"],
                    "type": "exclusive",
                    "status": "attached",
                    "created_at": _now(),
                }
            )
        return {
            "id": vol["id"],
            "name": vol["name"],
            "type": "sbs_5k",
            "size": vol["size"],
            "project_id": vol["project"],
            "zone": vol["zone"],
            "tags": vol["tags"],
            "status": status,
            "references": refs,
            "created_at": vol["created_at"],
            "updated_at": _now(),
            "specs": {"perf_iops": 5000, "class": "sbs"},
        }

    # ---------------------------------------------------------------- routing

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        with self.lock:
            self.calls.append(Call(method, path, query, body))
            self._settle()
            for pattern, handler in self._routes():
                match = re.fullmatch(pattern, path)
                if match and handler[0] == method:
                    try:
                        return handler[1](*match.groups(), query=query, body=body)
                    except ApiError as exc:
                        return exc.status, {"type": exc.error_type, "message": exc.message}
            return 404, {"type": "not_found", "message": f"no route {method} {path}"}

    def _routes(self) -> list[tuple[str, tuple[str, Any]]]:
        z = r"/(?:instance|block)/v1/zones/([a-z0-9-]+)"
        i = r"([0-9a-f-]+)"
        return [
            (z + "/products/servers", ("GET", self.list_products)),
            (z + "/products/servers/availability", ("GET", self.get_availability)),
            (z + "/servers", ("GET", self.list_servers)),
            (z + "/servers", ("POST", self.create_server)),
            (z + f"/servers/{i}", ("GET", self.get_server)),
            (z + f"/servers/{i}", ("DELETE", self.delete_server)),
            (z + f"/servers/{i}/action", ("POST", self.action)),
            (z + f"/servers/{i}/user_data/([a-z-]+)", ("PATCH", self.set_user_data)),
            (z + f"/servers/{i}/private_nics", ("GET", self.list_nics)),
            (z + f"/servers/{i}/private_nics", ("POST", self.create_nic)),
            (z + "/ips", ("GET", self.list_ips)),
            (z + "/ips", ("POST", self.create_ip)),
            (z + f"/ips/{i}", ("DELETE", self.delete_ip)),
            (r"/instance/v1/zones/([a-z0-9-]+)" + f"/volumes/{i}", ("GET", self.get_local)),
            (r"/instance/v1/zones/([a-z0-9-]+)" + f"/volumes/{i}", ("DELETE", self.delete_local)),
            (r"/block/v1/zones/([a-z0-9-]+)/volumes", ("GET", self.list_block)),
            (r"/block/v1/zones/([a-z0-9-]+)/volumes", ("POST", self.create_block)),
            (r"/block/v1/zones/([a-z0-9-]+)" + f"/volumes/{i}", ("GET", self.get_block)),
            (r"/block/v1/zones/([a-z0-9-]+)" + f"/volumes/{i}", ("PATCH", self.update_block)),
            (r"/block/v1/zones/([a-z0-9-]+)" + f"/volumes/{i}", ("DELETE", self.delete_block)),
        ]

    @staticmethod
    def _page(items: list[Any], query: dict[str, list[str]], key: str) -> tuple[int, Any]:
        page = int(query.get("page", ["1"])[0])
        size = int((query.get("per_page") or query.get("page_size") or ["50"])[0])
        return 200, {key: items[(page - 1) * size : page * size], "total_count": len(items)}

    @staticmethod
    def _tags_match(tags: list[str], query: dict[str, list[str]]) -> bool:
        wanted = [t for value in query.get("tags", []) for t in value.split(",") if t]
        return all(t in tags for t in wanted)

    # ---------------------------------------------------------------- products

    def list_products(self, zone: str, *, query: Any, body: Any) -> tuple[int, Any]:
        servers = {}
        for name, (price, cpus, ram, gpus, gpu_name, gpu_mem) in PRODUCTS.items():
            servers[name] = {
                "hourly_price": self.prices.get(name, price),
                "monthly_price": round(self.prices.get(name, price) * 730, 2),
                "alt_names": [],
                "ncpus": cpus,
                "ram": ram * GIB,
                "arch": "x86_64",
                "gpu": gpus,
                "gpu_info": (
                    {
                        "gpu_manufacturer": "NVIDIA",
                        "gpu_name": gpu_name,
                        "gpu_memory": gpu_mem * GIB,
                    }
                    if gpu_name
                    else None
                ),
                "end_of_service": False,
                "scratch_storage_max_volumes_count": 0,
            }
        return 200, {"servers": servers, "total_count": len(servers)}

    def get_availability(self, zone: str, *, query: Any, body: Any) -> tuple[int, Any]:
        servers = {name: {"availability": self.availability.get(name, "available")}
                   for name in PRODUCTS}  # fmt: skip
        return 200, {"servers": servers, "total_count": len(servers)}

    # ---------------------------------------------------------------- servers

    def list_servers(self, zone: str, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        servers = [
            self._server_json(s)
            for s in self.servers.values()
            if s["zone"] == zone and self._tags_match(s["tags"], query)
        ]
        return self._page(servers, query, "servers")

    def _get(self, store: dict[str, dict[str, Any]], ident: str, what: str) -> dict[str, Any]:
        if ident not in store:
            raise ApiError(404, "unknown_resource", f'"{what}" not found')
        return store[ident]

    def create_server(
        self, zone: str, *, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        kind = body["commercial_type"]
        if kind not in KNOWN_TYPES:
            raise ApiError(400, "invalid_arguments", f"commercial type {kind} not found")
        if kind in self.out_of_stock or self.availability.get(kind) == "shortage":
            raise ApiError(412, "out_of_stock", f"{kind} is out of stock in {zone}")
        server_id = str(uuid.uuid4())
        volumes: dict[str, tuple[str, str]] = {}
        for key, spec in (body.get("volumes") or {}).items():
            vtype = spec.get("volume_type")
            if vtype == "l_ssd" and kind not in LOCAL_STORAGE:
                raise ApiError(400, "invalid_arguments", f"{kind} does not support l_ssd volumes")
            if spec.get("id"):
                vol = self._get(self.block_volumes, spec["id"], "volume")
                if vol["server_id"] in self.servers:
                    raise ApiError(412, "precondition_failed", "volume already attached")
                if vol.get("reads_left", 0) > 0:
                    raise ApiError(
                        400, "invalid_arguments", f"volume {spec['id']} is {vol['status']}"
                    )
                volumes[key] = ("sbs_volume", spec["id"])
                continue
            vid = str(uuid.uuid4())
            record = {
                "id": vid,
                "name": spec.get("name") or f"vol-{vid[:8]}",
                "size": spec.get("size", 0),
                "zone": zone,
                "server_id": server_id,
                "project": body.get("project"),
                "tags": [],
                "created_at": _now(),
            }
            (self.block_volumes if vtype == "sbs_volume" else self.local_volumes)[vid] = record
            volumes[key] = (vtype, vid)
        for vtype, vid in volumes.values():
            if vtype == "sbs_volume":
                self.block_volumes[vid]["server_id"] = server_id
        for ip_id in body.get("public_ips") or []:
            self._get(self.ips, ip_id, "ip")["server_id"] = server_id
        dynamic = body.get("dynamic_ip_required", True) and not body.get("public_ips")
        self.servers[server_id] = {
            "id": server_id,
            "name": body.get("name"),
            "commercial_type": kind,
            "state": "stopped",
            "tags": body.get("tags") or [],
            "zone": zone,
            "project": body.get("project"),
            "creation_date": _now(),
            "ip_ids": list(body.get("public_ips") or []),
            "dynamic_ip": self._server_ip(
                {"id": str(uuid.uuid4()), "address": "51.15.0.9", "tags": []}
            )
            if dynamic
            else None,
            "volumes": volumes,
            "nics": [],
        }
        return 201, {"server": self._server_json(self.servers[server_id])}

    def get_server(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        return 200, {"server": self._server_json(self._get(self.servers, ident, "instance_server"))}

    def delete_server(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        server = self._get(self.servers, ident, "instance_server")
        if server["state"] != "stopped":
            raise ApiError(400, "invalid_request_error", "instance should be powered off")
        del self.servers[ident]
        for ip in self.ips.values():
            if ip["server_id"] == ident:
                ip["server_id"] = None
        return 204, None

    def action(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        server = self._get(self.servers, ident, "instance_server")
        action = body["action"]
        if action == "poweron" and server["commercial_type"] in self.no_stock_at_poweron:
            raise ApiError(
                412,
                "precondition_failed",
                f"out of stock: no {server['commercial_type']} available in {zone} right now",
            )
        if action == "poweron" and server["state"] == "stopped":
            server["state"], server["reads_left"] = "starting", self.transition_reads
        elif action == "poweroff" and server["state"] == "running":
            server["state"], server["reads_left"] = "stopping", self.transition_reads
        elif action == "terminate" and server["state"] in ("running", "stopped"):
            server["state"], server["reads_left"] = "stopping", self.transition_reads
            server["terminating"] = True
        else:
            raise ApiError(
                400, "invalid_request_error", f"cannot {action} a {server['state']} server"
            )
        task = {
            "id": str(uuid.uuid4()),
            "description": action,
            "status": "pending",
            "href_from": f"/servers/{ident}/action",
            "href_result": f"/servers/{ident}",
            "started_at": _now(),
            "progress": 0,
            "zone": zone,
        }
        return 202, {"task": task}

    def set_user_data(
        self, zone: str, ident: str, key: str, *, query: Any, body: Any
    ) -> tuple[int, Any]:
        self._get(self.servers, ident, "instance_server")
        self.user_data[(ident, key)] = body
        return 204, None

    def list_nics(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        return self._page(
            self._get(self.servers, ident, "instance_server")["nics"], query, "private_nics"
        )

    def create_nic(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        server = self._get(self.servers, ident, "instance_server")
        nic = {
            "id": str(uuid.uuid4()),
            "server_id": ident,
            "private_network_id": body["private_network_id"],
            "mac_address": "02:00:00:00:00:01",
            "state": "available",
            "tags": [],
            "zone": zone,
        }
        server["nics"].append(nic)
        return 201, {"private_nic": nic}

    # ---------------------------------------------------------------- IPs

    def list_ips(self, zone: str, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        ips = [
            self._ip_json(ip)
            for ip in self.ips.values()
            if ip["zone"] == zone and self._tags_match(ip["tags"], query)
        ]
        return self._page(ips, query, "ips")

    def create_ip(self, zone: str, *, query: Any, body: Any) -> tuple[int, Any]:
        ident = str(uuid.uuid4())
        self.ips[ident] = {
            "id": ident,
            "address": f"51.15.{len(self.ips) + 1}.{len(self.calls) % 250}",
            "tags": body.get("tags") or [],
            "zone": zone,
            "project": body.get("project"),
            "type": body.get("type", "routed_ipv4"),
            "server_id": None,
        }
        return 201, {"ip": self._ip_json(self.ips[ident])}

    def delete_ip(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        self._get(self.ips, ident, "ip")
        del self.ips[ident]
        return 204, None

    # ---------------------------------------------------------------- volumes

    def _in_use(self, vol: dict[str, Any]) -> bool:
        return vol["server_id"] in self.servers

    def get_local(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        vol = self._get(self.local_volumes, ident, "instance_volume")
        return 200, {
            "volume": {
                "id": ident,
                "name": vol["name"],
                "size": vol["size"],
                "volume_type": "l_ssd",
                "zone": zone,
                "tags": [],
                "state": "available",
                "project": vol["project"],
            }
        }

    def delete_local(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        vol = self._get(self.local_volumes, ident, "instance_volume")
        if self._in_use(vol):
            raise ApiError(412, "precondition_failed", "resource_still_in_use")
        del self.local_volumes[ident]
        return 204, None

    def list_block(self, zone: str, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        vols = [
            self._block_json(v)
            for v in self.block_volumes.values()
            if v["zone"] == zone and self._tags_match(v["tags"], query)
        ]
        return self._page(vols, query, "volumes")

    def create_block(self, zone: str, *, query: Any, body: Any) -> tuple[int, Any]:
        ident = str(uuid.uuid4())
        self.block_volumes[ident] = {
            "id": ident,
            "name": body.get("name"),
            "size": body["from_empty"]["size"],
            "zone": zone,
            "server_id": None,
            "project": body.get("project_id"),
            "tags": body.get("tags") or [],
            "created_at": _now(),
            "status": "creating",
            "reads_left": self.transition_reads,
        }
        return 200, self._block_json(self.block_volumes[ident])

    def get_block(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        return 200, self._block_json(self._get(self.block_volumes, ident, "volume"))

    def update_block(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        vol = self._get(self.block_volumes, ident, "volume")
        if body.get("tags") is not None:
            vol["tags"] = body["tags"]
        return 200, self._block_json(vol)

    def delete_block(self, zone: str, ident: str, *, query: Any, body: Any) -> tuple[int, Any]:
        vol = self._get(self.block_volumes, ident, "volume")
        if self._in_use(vol):
            raise ApiError(412, "precondition_failed", "resource_still_in_use")
        if vol.get("reads_left", 0) > 0:
            raise ApiError(412, "precondition_failed", f"volume is {vol['status']}")
        vol["status"], vol["reads_left"] = "deleting", self.transition_reads
        return 204, None


def serve(fake: FakeScaleway) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            if self.headers.get("x-auth-token") != fake.token:
                self._reply(401, {"type": "denied_authentication", "message": "invalid token"})
                return
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = raw
            if "json" in (self.headers.get("content-type") or ""):
                body = json.loads(raw or b"{}")
            status, payload = fake.handle(self.command, parts.path, parse_qs(parts.query), body)
            self._reply(status, payload)

        def _reply(self, status: int, payload: Any) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
