"""The `local` provider: each "machine" is the node agent running as a local process with the
simulator engine, and each "volume" a folder. Machines and volumes are recorded as files under
`<data_dir>/local-provider/`, so they outlive the worker (a worker crash must not kill them, as it
would not kill a cloud VM) and the reconciler can list them.

Fault injection (settings, prefix INVENTIV_LOCAL_) drives every lifecycle path in tests and in
`make dev`: create fails, no IP, engine never ready, delete fails N times, machine disappears,
the API answers 5xx for a while, a new machine is not found for a while, capacity is lost at
power-on.

The async methods run in the worker's event loop: everything that blocks (scanning processes,
waiting for them to exit, spawning) runs through `asyncio.to_thread`, as a cloud SDK would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from activities.providers.base import (
    Compute,
    CreateRequest,
    InstanceOffer,
    InvalidRequestError,
    NoCapacityError,
    ProviderInstance,
    ProviderVolume,
    TransientProviderError,
    VolumesMixin,
)
from activities.providers.local.catalogue import LOCAL_INSTANCE_TYPE, offers
from activities.providers.local.settings import LocalFaults
from agent.identity import AGENT_DIR
from core.embedded import free_port
from core.settings import Settings


def machine_pids(instance_id: str) -> list[int]:
    """Processes of a local machine: the agent and its engine carry the instance id in their
    environment, as cloud resources carry it as a tag. Found this way, a process started by an
    attempt that crashed before recording its pid is still found (and stopped)."""
    pids = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("INVENTIV_AGENT_INSTANCE_ID") == instance_id:
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


# What a local machine inherits from the worker, as a VM would have it: the system basics and
# the agent's and engines' own variables. Never the worker's secrets (INVENTIV_SECRET_KEY,
# INVENTIV_DATABASE_URL, cloud credentials): an engine may run code its model brought along.
MACHINE_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)
MACHINE_ENV_PREFIXES = (
    "LC_", "INVENTIV_AGENT_", "HF_", "VLLM_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "TORCH_",
    "NCCL_", "OMP_",
)  # fmt: skip


def machine_environment(worker_env: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of the worker's environment, and the agent importable from here."""
    env = {
        name: value
        for name, value in worker_env.items()
        if name in MACHINE_ENV_NAMES or name.startswith(MACHINE_ENV_PREFIXES)
    }
    env["PYTHONPATH"] = str(AGENT_DIR.parent)
    return env


class LocalCompute(VolumesMixin, Compute):
    kind = "local"

    def __init__(self, settings: Settings, faults: LocalFaults | None = None) -> None:
        self.settings = settings
        self.faults = faults or LocalFaults()
        self.root = settings.data_dir.resolve() / "local-provider"
        self.machines = self.root / "machines"
        self.volumes = self.root / "volumes"
        self._lock = asyncio.Lock()
        self._outage_ends: float | None = None

    @classmethod
    def from_settings(cls, provider_settings: Any, settings: Settings) -> LocalCompute:
        return cls(settings, provider_settings)

    # ------------------------------------------------------------ records

    def _machine_file(self, resource_id: str) -> Path:
        return self.machines / f"{resource_id}.json"

    def _read_machine(self, resource_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._machine_file(resource_id).read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        # Owner-only, like a VM's /etc/inventiv/agent.env: a machine record holds its agent token.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        tmp.replace(path)  # atomic: a crash never leaves half a record

    def _all_machines(self) -> list[dict[str, Any]]:
        if not self.machines.exists():
            return []
        records = []
        for path in sorted(self.machines.glob("*.json")):
            with contextlib.suppress(json.JSONDecodeError, FileNotFoundError):
                records.append(json.loads(path.read_text()))
        return records

    def _volume_meta(self, volume_id: str) -> Path:
        return self.volumes / volume_id / "volume.json"

    def _all_volumes(self) -> list[ProviderVolume]:
        if not self.volumes.exists():
            return []
        found = []
        for meta in sorted(self.volumes.glob("*/volume.json")):
            with contextlib.suppress(json.JSONDecodeError, FileNotFoundError):
                found.append(ProviderVolume(**json.loads(meta.read_text())))
        return found

    async def _to_instance(self, record: dict[str, Any]) -> ProviderInstance:
        running = bool(await asyncio.to_thread(machine_pids, record["instance_id"]))
        ip = None if self.faults.no_ip or not running else "127.0.0.1"
        return ProviderInstance(
            resource_id=record["resource_id"],
            instance_id=record["instance_id"],
            state="running" if running else "stopped",
            ip_address=ip,
            zone="local",
            agent_url=f"http://127.0.0.1:{record['agent_port']}" if ip else None,
            engine_url=f"http://127.0.0.1:{record['engine_port']}" if ip else None,
            created_at=datetime.fromisoformat(record["created_at"]),
            volumes=[v for v in self._all_volumes() if v.instance_id == record["instance_id"]],
        )

    async def _vanish_expired(self, record: dict[str, Any]) -> bool:
        """Fault injection: a machine older than vanish_after_s is gone, as if deleted by hand."""
        if self.faults.vanish_after_s is None:
            return False
        age = (datetime.now(UTC) - datetime.fromisoformat(record["created_at"])).total_seconds()
        if age < self.faults.vanish_after_s:
            return False
        await asyncio.to_thread(self._kill, record)
        with contextlib.suppress(FileNotFoundError):
            self._machine_file(record["resource_id"]).unlink()
        return True

    def _answer_or_outage(self) -> None:
        """Fault injection: during the outage every call fails as a cloud API's 5xx does."""
        if not self.faults.api_outage_s:
            return
        now = time.monotonic()
        if self._outage_ends is None:
            self._outage_ends = now + self.faults.api_outage_s
        if now < self._outage_ends:
            raise TransientProviderError(
                "local provider: 503 Service Unavailable (injected outage, "
                f"{self._outage_ends - now:.0f}s left)"
            )

    def _not_visible_yet(self, record: dict[str, Any]) -> bool:
        """Fault injection: a machine younger than not_found_for_s is not found yet."""
        age = (datetime.now(UTC) - datetime.fromisoformat(record["created_at"])).total_seconds()
        return age < self.faults.not_found_for_s

    # ------------------------------------------------------------ Compute

    async def create(self, request: CreateRequest) -> ProviderInstance:
        self._answer_or_outage()
        async with self._lock:
            for record in self._all_machines():
                if record["instance_id"] == request.instance_id:
                    self._ensure_volumes(record)
                    return await self._to_instance(record)
            match self.faults.fail_create:
                case "transient":
                    raise TransientProviderError(
                        "local provider: injected transient create failure"
                    )
                case "capacity":
                    raise NoCapacityError(
                        f"local provider: no capacity for {request.instance_type}"
                    )
                case "invalid":
                    raise InvalidRequestError("local provider: injected invalid request")
            if request.instance_type != LOCAL_INSTANCE_TYPE:
                raise InvalidRequestError(
                    f"local provider has no instance type {request.instance_type!r}; "
                    f"use {LOCAL_INSTANCE_TYPE!r}"
                )
            planned = [
                self._volume_plan(
                    request.instance_id, "boot", self.faults.boot_volume_gb, True, True
                )
            ] + [
                self._volume_plan(
                    request.instance_id, v.volume_type, v.size_gb, False, v.delete_on_terminate
                )
                for v in request.volumes
            ]
            record = {
                "resource_id": f"local-{uuid.uuid4().hex[:12]}",
                "instance_id": request.instance_id,
                "created_at": datetime.now(UTC).isoformat(),
                "agent_port": free_port(),
                "engine_port": free_port(),
                "pid": None,
                "env": self._agent_env(request),
                "delete_attempts": 0,
                "volumes": planned,
            }
            # The record (with its planned volumes) is written atomically before anything else:
            # a crash at any point leaves something a retry finds by the instance tag.
            self._write_json(self._machine_file(record["resource_id"]), record)
            self._ensure_volumes(record)
            return await self._to_instance(record)

    @staticmethod
    def _volume_plan(
        instance_id: str, volume_type: str, size_gb: float, is_boot: bool, delete: bool
    ) -> dict[str, Any]:
        return {
            "volume_id": f"vol-{uuid.uuid4().hex[:12]}",
            "volume_type": volume_type,
            "size_gb": size_gb,
            "is_boot": is_boot,
            "delete_on_terminate": delete,
            "instance_id": instance_id,
        }

    def _ensure_volumes(self, record: dict[str, Any]) -> None:
        for meta in record.get("volumes", []):
            path = self._volume_meta(meta["volume_id"])
            if not path.exists():
                self._write_json(path, meta)

    def _agent_env(self, request: CreateRequest) -> dict[str, str]:
        engine_command = f"{sys.executable} -m agent.sim"
        if self.faults.engine_never_ready:
            # An engine that starts and never answers: the boot deadline must catch it.
            engine_command = f"{sys.executable} -c 'import time; time.sleep(10**9)'"
        return {
            "INVENTIV_AGENT_HOST": "127.0.0.1",
            "INVENTIV_AGENT_MODEL": request.model,
            "INVENTIV_AGENT_SERVED_NAME": request.served_name,
            "INVENTIV_AGENT_ENGINE_COMMAND": engine_command,
            "INVENTIV_AGENT_ENGINE_ARGS": json.dumps(request.engine_args),
            "INVENTIV_AGENT_GPU_COUNT": str(request.gpu_count),
            "INVENTIV_AGENT_INSTANCE_ID": request.instance_id,
            **request.agent_env,
        }

    async def start(self, resource_id: str) -> None:
        self._answer_or_outage()
        async with self._lock:
            record = self._read_machine(resource_id)
            if record is None:
                raise InvalidRequestError(f"local machine {resource_id} does not exist")
            if await asyncio.to_thread(machine_pids, record["instance_id"]):
                return
            if self.faults.capacity_lost_at_start:
                # As EC2 pending -> terminated: the provider takes the machine (and its
                # delete-on-terminate volumes) back and says why.
                self._machine_file(resource_id).unlink(missing_ok=True)
                for meta in record.get("volumes", []):
                    if meta["delete_on_terminate"]:
                        await asyncio.to_thread(
                            shutil.rmtree, self.volumes / meta["volume_id"], True
                        )
                raise NoCapacityError(
                    "local provider: Server.InsufficientInstanceCapacity: machine reclaimed "
                    "at power-on (injected)"
                )
            await asyncio.to_thread(self._spawn, record)

    def _spawn(self, record: dict[str, Any]) -> None:
        env = {**machine_environment(os.environ), **record["env"]}
        env["INVENTIV_AGENT_PORT"] = str(record["agent_port"])
        env["INVENTIV_AGENT_ENGINE_PORT"] = str(record["engine_port"])
        log_path = self.root / "logs" / f"{record['resource_id']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Its own session: the machine outlives the worker that started it.
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        record["pid"] = proc.pid
        self._write_json(self._machine_file(record["resource_id"]), record)

    def _kill(self, record: dict[str, Any]) -> None:
        """Stop every process of the machine: SIGTERM, then SIGKILL what is left. Blocks for up
        to 10 s: async callers run it in a thread."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = machine_pids(record["instance_id"])
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for _ in range(100):
                if not machine_pids(record["instance_id"]):
                    return
                time.sleep(0.05)

    async def get(self, resource_id: str) -> ProviderInstance | None:
        self._answer_or_outage()
        async with self._lock:
            record = self._read_machine(resource_id)
            if record is None or await self._vanish_expired(record):
                return None
            if self._not_visible_yet(record):
                # What the AWS adapter makes of NotFound within its window: maybe not yet.
                raise TransientProviderError(
                    f"local provider: {resource_id} not found yet (eventually consistent)"
                )
            return await self._to_instance(record)

    async def delete(self, resource_id: str) -> None:
        self._answer_or_outage()
        async with self._lock:
            record = self._read_machine(resource_id)
            if record is None:
                return
            if record["delete_attempts"] < self.faults.delete_failures:
                record["delete_attempts"] += 1
                self._write_json(self._machine_file(resource_id), record)
                raise TransientProviderError(
                    f"local provider: injected delete failure {record['delete_attempts']}"
                )
            await asyncio.to_thread(self._kill, record)
            self._machine_file(resource_id).unlink(missing_ok=True)

    async def list_tagged(self) -> list[ProviderInstance]:
        self._answer_or_outage()
        async with self._lock:
            return [
                await self._to_instance(r)
                for r in self._all_machines()
                if not await self._vanish_expired(r) and not self._not_visible_yet(r)
            ]

    async def list_volumes(self, resource_id: str) -> list[ProviderVolume]:
        self._answer_or_outage()
        async with self._lock:
            record = self._read_machine(resource_id)
            if record is None:
                return []
            return [v for v in self._all_volumes() if v.instance_id == record["instance_id"]]

    async def list_tagged_volumes(self) -> list[ProviderVolume]:
        self._answer_or_outage()
        async with self._lock:
            return self._all_volumes()

    async def delete_volume(self, volume_id: str) -> None:
        self._answer_or_outage()
        async with self._lock:
            folder = self.volumes / volume_id
            if not folder.exists():
                return
            attempts = folder / ".delete_attempts"  # counted with the volume, like a machine's
            failed = int(attempts.read_text()) if attempts.exists() else 0
            if failed < self.faults.delete_failures:
                attempts.write_text(str(failed + 1))
                raise TransientProviderError(
                    f"local provider: injected volume delete failure {failed + 1}"
                )
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def catalogue(self) -> list[InstanceOffer]:
        return offers(self.faults)

    # ------------------------------------------------------------ dev supervisor helpers

    def power_off_all(self) -> int:
        """Stop every local machine's processes, keeping records (a power cut, not a delete)."""
        count = 0
        for record in self._all_machines():
            if machine_pids(record["instance_id"]):
                self._kill(record)
                count += 1
        return count

    def power_on_all(self) -> int:
        """Restart machines that were powered off (used when `inventiv dev` starts again)."""
        count = 0
        for record in self._all_machines():
            if record.get("pid") and not machine_pids(record["instance_id"]):
                self._spawn(record)
                count += 1
        return count
