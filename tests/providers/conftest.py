"""Stand-ins for the providers: moto's EC2 server (server mode, real HTTP on loopback), a local
HTTP server speaking the Scaleway API's JSON, and a real SSH server (asyncssh) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import boto3
import pytest
from moto.server import ThreadedMotoServer
from mypy_boto3_ec2 import EC2Client

from activities.providers.aws.settings import AWSSettings
from activities.providers.images import WorkerImageSettings
from activities.providers.scaleway.settings import ScalewaySettings
from core.embedded import free_port
from tests.providers.fake_scaleway import FakeScaleway, serve

REGION = "us-east-1"
# Where the tests' GPU machines pull their worker images from (nothing is pulled in the tests).
IMAGES = WorkerImageSettings(registry="registry.example.com/inventiv", tag="test")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def ec2(moto_endpoint: str) -> EC2Client:
    """A plain boto3 client on the stand-in, to look behind the adapter's back."""
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def aws_settings(moto_endpoint: str, ec2: EC2Client) -> AWSSettings:
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return AWSSettings(
        access_key_id="testing",
        secret_access_key="testing-secret",
        region=REGION,
        endpoint_url=moto_endpoint,
        ami_ids={"cpu-sim": ami, "nvidia-h100": ami},
        security_group_ids=[
            ec2.create_security_group(
                GroupName=f"inventiv-{uuid.uuid4().hex[:8]}", Description="control plane only"
            )["GroupId"]
        ],
        waiter_delay_s=1,
        waiter_max_attempts=10,
        not_found_window_s=1,
    )


@pytest.fixture
def fake_scaleway() -> Iterator[FakeScaleway]:
    fake = FakeScaleway(token=str(uuid.uuid4()))
    server = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scaleway_settings(fake_scaleway: FakeScaleway) -> ScalewaySettings:
    return ScalewaySettings(
        access_key="SCWXXXXXXXXXXXXXXXXX",
        secret_key=fake_scaleway.token,
        project_id=str(uuid.uuid4()),
        api_url=fake_scaleway.url,
        security_group_id=str(uuid.uuid4()),
        poll_interval_s=0.05,
        state_timeout_s=5,
    )


@dataclass
class SSHHost:
    """A real SSH server (asyncssh) on loopback that runs commands in `home` with a real shell."""

    port: int
    home: Path
    host_key: asyncssh.SSHKey
    client_key_path: Path

    def public_host_key(self) -> str:
        return self.host_key.export_public_key().decode().strip()


@pytest.fixture
async def ssh_host(tmp_path: Path) -> AsyncIterator[SSHHost]:
    home = tmp_path / "home"
    home.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(client_key_path))
    client_key_path.chmod(0o600)

    async def run(process: asyncssh.SSHServerProcess[str]) -> None:
        proc = await asyncio.create_subprocess_shell(
            process.command or "true",
            cwd=home,
            env={"HOME": str(home), "PATH": os.environ["PATH"]},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        process.stdout.write(out.decode())
        process.stderr.write(err.decode())
        process.exit(proc.returncode or 0)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        process_factory=run,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(home).encode()),
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield SSHHost(port, home, host_key, client_key_path)
    finally:
        # Whatever a failed test left running there.
        for pid_file in home.glob(".inventiv/*/agent.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        server.close()
        await server.wait_closed()
