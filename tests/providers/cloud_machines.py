"""A stand-in for what EC2 does after RunInstances: boot the machine and run its user data.

moto records instances but runs nothing. This emulator watches moto for running instances of
ours, and for each one does what cloud-init would: writes the user data's files (under a folder
of its own instead of /), then runs its commands, so the real `agent/bootstrap.sh` downloads the
agent from the API, verifies its checksum and starts it. Each instance's private address is a
loopback address (its subnet is 127.64.x.0/24), so the agent and engine listen on the ports a
real machine uses, one machine per address. When moto says an instance is terminated, its
processes are stopped, as the hypervisor would. The model-cache mount is not run (it needs root
and a disk); the emulator checks instead that the device it names is the Nitro name of an EBS
volume attached to that instance, and records it in `mounts`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from mypy_boto3_ec2 import EC2Client

from activities.providers.aws.adapter import nitro_device
from activities.providers.base import INSTANCE_TAG
from activities.providers.local.adapter import machine_pids

MACHINE_PATHS = ("/etc/inventiv", "/opt/inventiv", "/mnt/models")


class CloudInitEmulator:
    def __init__(self, ec2: EC2Client, root: Path) -> None:
        self.ec2 = ec2
        self.root = root
        self.booted: dict[str, str] = {}  # EC2 instance id -> our instance id
        self.boot_logs: dict[str, Path] = {}
        self.mounts: dict[str, str] = {}  # EC2 instance id -> the volume its user data mounts
        self._task: asyncio.Task[None] | None = None
        # A tick runs in a thread that cancelling the task does not stop: exit waits for it.
        self._ticking = threading.Lock()

    def _machine_root(self, ec2_id: str) -> Path:
        return self.root / ec2_id

    def _localise(self, ec2_id: str, text: str) -> str:
        for path in MACHINE_PATHS:
            text = text.replace(path, f"{self._machine_root(ec2_id)}{path}")
        return text

    def _boot(self, raw: dict[str, Any]) -> None:
        ec2_id, ip = raw["InstanceId"], raw["PrivateIpAddress"]
        attr = self.ec2.describe_instance_attribute(InstanceId=ec2_id, Attribute="userData")
        user_data = base64.b64decode(attr["UserData"]["Value"]).decode()
        assert user_data.startswith("#cloud-config\n")
        document = json.loads(user_data.split("\n", 1)[1])
        for item in document["write_files"]:
            path = Path(self._localise(ec2_id, item["path"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self._localise(ec2_id, item["content"]))
            path.chmod(int(item["permissions"], 8))
        env_file = Path(self._localise(ec2_id, "/etc/inventiv/agent.env"))
        # What differs from a real VM: no systemd here, this loopback address as the machine's
        # network, the test's Python (it has the agent's packages) as the machine's python3, and
        # no model cache (there is no hub to fill it from here: the simulator needs no weights).
        with env_file.open("a") as f:
            f.write(
                "WORKER_AGENT_MODE=background\n"
                f"INVENTIV_AGENT_HOST={ip}\nINVENTIV_AGENT_ENGINE_HOST={ip}\n"
                f"WORKER_PYTHON={sys.executable}\nunset INVENTIV_AGENT_MODEL_CACHE_DIR\n"
            )
        log = self._machine_root(ec2_id) / "cloud-init.log"
        self.boot_logs[ec2_id] = log
        for command in document["runcmd"]:
            if "mount " in command[-1] and "/dev/disk/by-id/" in command[-1]:
                self._check_mount(ec2_id, command[-1])
                continue
            localised = [self._localise(ec2_id, part) for part in command]
            with log.open("ab") as out:
                subprocess.run(localised, stdout=out, stderr=out, check=False, timeout=120)
        self.booted[ec2_id] = next(t["Value"] for t in raw["Tags"] if t["Key"] == INSTANCE_TAG)

    def _check_mount(self, ec2_id: str, command: str) -> None:
        """The volume to mount must be attached by the time cloud-init waits for it."""
        for _ in range(50):
            volumes = self.ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [ec2_id]}]
            )["Volumes"]
            for volume in volumes:
                if f"mount {nitro_device(volume['VolumeId'])} " in command:
                    self.mounts[ec2_id] = volume["VolumeId"]
                    return
            time.sleep(0.1)
        raise AssertionError(f"{ec2_id}'s user data mounts a device no attached volume has")

    def _halt(self, ec2_id: str) -> None:
        instance_id = self.booted.pop(ec2_id)
        for pid in machine_pids(instance_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _halt_all(self) -> None:
        """Every process started from a machine folder of this emulator (PYTHONPATH names it)."""
        for ec2_id in list(self.booted):
            self._halt(ec2_id)
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("PYTHONPATH", "").startswith(str(self.root)):
                    proc.kill()

    def tick(self) -> None:
        with self._ticking:
            self._tick()

    async def catch_up(self) -> None:
        """One tick now: act on what EC2 says at this moment (the loop looks only every 0.3 s
        plus a tick's time, longer in a loaded process), as a hypervisor would at once."""
        await asyncio.to_thread(self.tick)

    def _tick(self) -> None:
        reservations = self.ec2.describe_instances(
            Filters=[{"Name": "tag-key", "Values": [INSTANCE_TAG]}]
        )["Reservations"]
        for reservation in reservations:
            for raw in reservation["Instances"]:
                ec2_id, state = raw["InstanceId"], raw["State"]["Name"]
                if (
                    state == "running"
                    and ec2_id not in self.booted
                    and ec2_id not in self.boot_logs
                ):
                    self._boot(dict(raw))
                elif state in ("shutting-down", "terminated", "stopped") and ec2_id in self.booted:
                    self._halt(ec2_id)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.tick)
            await asyncio.sleep(0.3)

    async def __aenter__(self) -> CloudInitEmulator:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.to_thread(self._ticking.acquire)
        try:
            self._halt_all()
        finally:
            self._ticking.release()
