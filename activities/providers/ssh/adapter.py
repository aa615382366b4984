"""Bare metal over SSH (asyncssh): registered hosts lent to one instance at a time.

Provisioning claims a free host with one conditional UPDATE (two instances never share a host),
connects with the host key verified (the key pinned with the host, else the known_hosts file;
never unverified), uploads the agent bundle and `agent/bootstrap.sh`, and runs the bootstrap,
which verifies `WORKER_AGENT_SHA256` before starting anything. The agent runs in a fresh
container of the flavor's worker image when the flavor has one and Docker answers on a GPU host;
otherwise as a Unix user made for this instance alone (`INVENTIV_SSH_TENANT_USERS`, the default:
root or passwordless sudo on the host), or as the SSH user. A host that cannot be reached or
refuses us is released at once, with a clear error.

Hosts are shared by projects one instance at a time, and an engine may run code its model
brought along, so terminating removes everything the tenant could write before the host is
released: the container; or the user's processes (any process group), crontab, at jobs, IPC
objects, files in the world-writable folders, home and the user itself; and it checks the GPUs
run nothing any more (`nvidia-smi`, where there is one). Until all that holds, `delete` raises
`ResourceNotYetGoneError` and keeps the host claimed.

Resource ids are `<host id>/<instance id>`: a stale id never touches the host's next tenant.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncssh
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from activities.providers.base import (
    CapacityMixin,
    Compute,
    CreateRequest,
    HostPoolMixin,
    InstanceOffer,
    InvalidRequestError,
    NoCapacityError,
    ProviderError,
    ProviderInstance,
    ProvisioningError,
    ResourceNotYetGoneError,
    TransientProviderError,
)
from activities.providers.cloud_init import (
    BOOTSTRAP_PATH,
    docker_env,
    docker_run,
    env_file,
    read_bootstrap,
)
from activities.providers.flavors import agent_environment, get_flavor
from activities.providers.images import WorkerImageSettings
from activities.providers.ssh.catalogue import offers
from activities.providers.ssh.settings import SSHSettings
from core.db import make_engine, make_sessionmaker
from core.models import BareMetalHost, Instance
from core.settings import Settings

REPO_ROOT = BOOTSTRAP_PATH.parents[1]
# bootstrap.sh exit statuses
_CHECKSUM_MISMATCH = 3
# the teardown's: something of the tenant is still there (the host stays claimed, retried)
_NOT_CLEAN = 75
# Exits _NOT_CLEAN, listing them, while a GPU runs a compute process; passes without nvidia-smi.
GPUS_BUSY = (
    "command -v nvidia-smi >/dev/null 2>&1 || exit 0; "
    "apps=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader "
    '2>&1) || { echo "nvidia-smi failed: $apps"; exit 75; }; '
    '[ -z "$apps" ] || { echo "$apps" | tr "\\n" ";"; exit 75; }'
)


def tenant_user(instance_id: str) -> str:
    """The Unix user an instance runs as on a shared host (at most 32 characters)."""
    return "inv-" + _uuid(instance_id).hex[:24]


def privileged(script: str) -> str:
    """`script` run as root: directly when the SSH user is root, else through passwordless sudo."""
    quoted = shlex.quote(script)
    return f'if [ "$(id -u)" = 0 ]; then sh -c {quoted}; else sudo -n sh -c {quoted}; fi'


def load_private_key(ref: str, settings: SSHSettings) -> asyncssh.SSHKey:
    scheme, _, value = ref.partition(":")
    try:
        if scheme == "file":
            return asyncssh.read_private_key(value)
        if scheme == "fernet" and settings.key_encryption_key is not None:
            fernet = Fernet(settings.key_encryption_key.get_secret_value().encode())
            return asyncssh.import_private_key(fernet.decrypt(value.encode()))
    except (OSError, asyncssh.KeyImportError, InvalidToken, ValueError) as exc:
        raise InvalidRequestError(f"cannot load the host's SSH key ({scheme}): {exc}") from None
    raise InvalidRequestError(f"unusable private key reference scheme {scheme!r}")


def _known_hosts(host: BareMetalHost, settings: SSHSettings) -> asyncssh.SSHKnownHosts:
    if host.host_key:
        pattern = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        return asyncssh.import_known_hosts(f"{pattern} {host.host_key.strip()}\n")
    if settings.known_hosts is not None:
        return asyncssh.read_known_hosts(str(settings.known_hosts))
    raise InvalidRequestError(
        f"no known host key for {host.name}: register its host key or set INVENTIV_SSH_KNOWN_HOSTS"
    )


class SSHCompute(HostPoolMixin, CapacityMixin, Compute):
    kind = "ssh"

    def __init__(
        self, settings: SSHSettings, database_url: str, images: WorkerImageSettings | None = None
    ) -> None:
        self.settings = settings
        self.images = images or WorkerImageSettings()
        self._engine = make_engine(database_url, pool_size=2)
        self._sessions = make_sessionmaker(self._engine)
        self._bundle: Path | None = None

    @classmethod
    def from_settings(cls, provider_settings: Any, settings: Settings) -> SSHCompute:
        return cls(provider_settings, settings.require("database_url"))

    def catalogue(self) -> list[InstanceOffer]:
        return offers(self.settings)

    # ------------------------------------------------------------------ claiming

    async def available_now(self, instance_type: str, project_id: uuid.UUID) -> int:
        """Enabled, unclaimed hosts of this type: the project's own and shared ones."""
        async with self._sessions() as session:
            free = await session.scalar(
                select(func.count())
                .select_from(BareMetalHost)
                .where(
                    col(BareMetalHost.claimed_by).is_(None),
                    col(BareMetalHost.enabled).is_(True),
                    col(BareMetalHost.instance_type) == instance_type,
                    or_(
                        col(BareMetalHost.project_id).is_(None),
                        col(BareMetalHost.project_id) == project_id,
                    ),
                )
            )
        return int(free or 0)

    async def claim_host(self, instance_id: str, instance_type: str) -> BareMetalHost | None:
        """This instance's host: the one it already holds, else a free one claimed atomically
        (its own project's hosts first, then shared ones)."""
        owner = _uuid(instance_id)
        async with self._sessions() as session:
            held = await session.scalar(
                select(BareMetalHost).where(col(BareMetalHost.claimed_by) == owner)
            )
            if held is not None:
                return held
            # A host owned by a project serves only that project's instances.
            project = select(col(Instance.project_id)).where(col(Instance.id) == owner)
            free = (
                select(col(BareMetalHost.id))
                .where(
                    col(BareMetalHost.claimed_by).is_(None),
                    col(BareMetalHost.enabled).is_(True),
                    col(BareMetalHost.instance_type) == instance_type,
                    or_(
                        col(BareMetalHost.project_id).is_(None),
                        col(BareMetalHost.project_id) == project.scalar_subquery(),
                    ),
                )
                .order_by(col(BareMetalHost.project_id).is_(None), col(BareMetalHost.created_at))
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            try:
                claimed = await session.scalar(
                    update(BareMetalHost)
                    .where(col(BareMetalHost.id) == free, col(BareMetalHost.claimed_by).is_(None))
                    .values(claimed_by=owner, claimed_at=func.now())
                    .returning(col(BareMetalHost.id))
                )
                await session.commit()
            except IntegrityError:  # this instance claimed another host concurrently
                await session.rollback()
                return await self.claim_host(instance_id, instance_type)
            return await session.get(BareMetalHost, claimed) if claimed is not None else None

    async def release_host(self, host_id: uuid.UUID, instance_id: str) -> bool:
        async with self._sessions() as session:
            released = await session.scalar(
                update(BareMetalHost)
                .where(
                    col(BareMetalHost.id) == host_id,
                    col(BareMetalHost.claimed_by) == _uuid(instance_id),
                )
                .values(claimed_by=None, claimed_at=None)
                .returning(col(BareMetalHost.id))
            )
            await session.commit()
            return released is not None

    async def _held(self, resource_id: str) -> tuple[BareMetalHost, str] | None:
        host_id, _, instance_id = resource_id.partition("/")
        async with self._sessions() as session:
            host = await session.get(BareMetalHost, _uuid(host_id))
        if host is None or str(host.claimed_by) != instance_id:
            return None
        return host, instance_id

    # ------------------------------------------------------------------ SSH

    async def _connect(self, host: BareMetalHost) -> asyncssh.SSHClientConnection:
        known_hosts = _known_hosts(host, self.settings)
        key = load_private_key(host.private_key_ref, self.settings)
        where = f"bare-metal host {host.name} ({host.address}:{host.port})"
        try:
            return await asyncssh.connect(
                host.address,
                host.port,
                username=host.user,
                client_keys=[key],
                known_hosts=known_hosts,
                connect_timeout=self.settings.connect_timeout_s,
                agent_path=None,
                config=[],
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise InvalidRequestError(
                f"{where} presented a host key that does not match the known one ({exc.reason}): "
                "refusing to connect"
            ) from None
        except asyncssh.PermissionDenied:
            raise InvalidRequestError(f"{where} refused our SSH key for user {host.user}") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise TransientProviderError(f"{where} is unreachable: {exc}") from None

    def _remote_dir(self, instance_id: str) -> str:
        return f"{self.settings.remote_dir}/{instance_id}"

    async def _agent_bundle(self) -> Path:
        """The agent bundle bootstrap.sh installs, built once by the agent's own tool."""
        if self._bundle is None or not self._bundle.exists():
            output = Path(tempfile.mkdtemp(prefix="inventiv-bundle-")) / "agent.tar.gz"
            proc = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "agent.version_tool", "bundle", str(output)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise ProvisioningError(f"cannot build the agent bundle: {proc.stderr.strip()}")
            self._bundle = output
        return self._bundle

    # ------------------------------------------------------------------ lifecycle

    async def create(self, request: CreateRequest) -> ProviderInstance:
        get_flavor(request.flavor)  # an unknown flavor fails before a host is claimed
        if request.volumes:
            raise InvalidRequestError(
                "bare-metal hosts have no provider volumes: use the host's own disks "
                "(INVENTIV_AGENT_MODEL_CACHE_DIR) and drop the deployment's volumes"
            )
        instance_type = request.instance_type
        host = await self.claim_host(request.instance_id, instance_type)
        if host is None:
            raise NoCapacityError(f"no free bare-metal host of type {instance_type!r}")
        try:
            await self._install(host, request)
        except ProviderError:
            await self.release_host(host.id, request.instance_id)
            raise
        return self._to_instance(host, request.instance_id)

    def _launch_command(
        self,
        request: CreateRequest,
        host: BareMetalHost,
        env: Mapping[str, str],
        image: str | None,
        tenant: bool,
    ) -> tuple[str, str]:
        """The shell command that starts the agent on the host (in `image` when one is given),
        and the one that reads its log."""
        flavor = get_flavor(request.flavor)
        remote = self._remote_dir(request.instance_id)
        log = f"{shlex.quote(remote)}/agent.log"
        if image:
            command = (
                f"cd {shlex.quote(remote)} && "
                + docker_env("./agent.env", "docker.env")
                + docker_run(
                    image,
                    flavor.accelerator,
                    f"inventiv-{request.instance_id}",
                    "docker.env",
                    env.get("INVENTIV_AGENT_MODEL_CACHE_DIR"),
                )
            )
        elif tenant:
            command = f"cd {shlex.quote(remote)} && " + privileged(
                self._tenant_start_script(request.instance_id, host.python)
            )
            log = privileged(f"cat {shlex.quote(self._tenant_home(request.instance_id))}/agent.log")
        else:
            command = (
                f"cd {shlex.quote(remote)} && set -a && . ./agent.env && set +a && "
                f"WORKER_AGENT_TARBALL=$PWD/agent.tar.gz WORKER_INSTALL_DIR=$PWD "
                f"WORKER_PYTHON={shlex.quote(host.python)} WORKER_AGENT_MODE=background "
                "sh ./bootstrap.sh"
            )
        return command, log

    async def _install(self, host: BareMetalHost, request: CreateRequest) -> None:
        flavor = get_flavor(request.flavor)
        remote = self._remote_dir(request.instance_id)
        env = agent_environment(
            request,
            python=host.python,
            agent_port=host.agent_port,
            engine_port=host.engine_port,
        )
        bundle = await self._agent_bundle()
        async with await self._connect(host) as conn:
            if (
                await conn.run(self._running_command(request.instance_id), check=False)
            ).exit_status == 0:
                return  # a retried create: the first try's agent is running
            # Without a registry the host runs the engine as a plain process (vLLM installed there).
            image = (
                self.images.image(flavor) if self.images.registry or self.images.images else None
            )
            container = (
                bool(image and host.gpu_inventory)
                and (await conn.run("docker info", check=False)).exit_status == 0
            )
            tenant = not container and self.settings.tenant_users
            if tenant and (await conn.run(privileged("true"), check=False)).exit_status != 0:
                raise InvalidRequestError(
                    f"bare-metal host {host.name}: a user per instance needs root or passwordless "
                    f"sudo for {host.user} (INVENTIV_SSH_TENANT_USERS=false runs every instance "
                    f"as {host.user})"
                )
            await self._run(
                conn, f"mkdir -p {shlex.quote(remote)} && chmod 700 {shlex.quote(remote)}"
            )
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(bundle), f"{remote}/agent.tar.gz")
                async with sftp.open(f"{remote}/bootstrap.sh", "w") as out:
                    await out.write(read_bootstrap())
                async with sftp.open(
                    f"{remote}/agent.env", "w", asyncssh.SFTPAttrs(permissions=0o600)
                ) as out:
                    await out.write(env_file(env))
            command, log = self._launch_command(
                request, host, env, image if container else None, tenant
            )
            result = await conn.run(command, check=False)
            if result.exit_status != 0:
                log_tail = await conn.run(
                    f"{log} 2>/dev/null | tail -n 5" if tenant else f"tail -n 5 {log}", check=False
                )
                await conn.run(self._cleanup_command(request.instance_id), check=False)
                message = str(result.stderr or result.stdout or "").strip().splitlines()
                detail = message[-1] if message else f"exit status {result.exit_status}"
                if log_tail.exit_status == 0 and log_tail.stdout:
                    detail += "; agent log ends with: " + str(log_tail.stdout).strip()
                if result.exit_status == _CHECKSUM_MISMATCH:
                    raise ProvisioningError(
                        f"agent integrity check failed on {host.name}: {detail}"
                    )
                raise ProvisioningError(f"agent did not start on {host.name}: {detail}")

    def _tenant_home(self, instance_id: str) -> str:
        return f"{self.settings.tenant_home_dir.rstrip('/')}/{tenant_user(instance_id)}"

    def _tenant_start_script(self, instance_id: str, python: str) -> str:
        """Run as root in the upload folder: make the instance's user (no login shell, a home
        only it can read, the GPU groups the host has), hand it the uploads, and run the
        bootstrap as that user with nothing of our environment but PATH."""
        user, home = (
            shlex.quote(tenant_user(instance_id)),
            shlex.quote(self._tenant_home(instance_id)),
        )
        groups = " ".join(shlex.quote(g) for g in self.settings.tenant_groups.split(",") if g)
        as_tenant = (
            'cd "$HOME" && set -a && . ./agent.env && set +a && '
            'WORKER_AGENT_TARBALL="$HOME/agent.tar.gz" WORKER_INSTALL_DIR="$HOME" '
            f"WORKER_PYTHON={shlex.quote(python)} WORKER_AGENT_MODE=background sh ./bootstrap.sh"
        )
        return (
            f"u={user}; h={home}; "
            'if ! id -u "$u" >/dev/null 2>&1; then '
            f'groups=""; for g in {groups}; do getent group "$g" >/dev/null && '
            'groups="$groups${groups:+,}$g"; done; '
            "shell=$(command -v nologin || echo /bin/false); "
            'useradd --create-home --home-dir "$h" --shell "$shell" --user-group '
            '${groups:+--groups "$groups"} "$u" || exit 1; fi; '
            'chmod 700 "$h" && '
            'install -m 600 -o "$u" -g "$u" ./agent.tar.gz ./bootstrap.sh ./agent.env "$h/" && '
            'cd "$h" && runuser -u "$u" -- env -i HOME="$h" USER="$u" LOGNAME="$u" '
            f'PATH="$PATH" LANG=C.UTF-8 sh -c {shlex.quote(as_tenant)}'
        )

    def _running_command(self, instance_id: str) -> str:
        remote = shlex.quote(self._remote_dir(instance_id))
        home = shlex.quote(self._tenant_home(instance_id))
        tenant = f'kill -0 "$(cat {home}/agent.pid 2>/dev/null)" 2>/dev/null'
        return (
            f'kill -0 "$(cat {remote}/agent.pid 2>/dev/null)" 2>/dev/null || '
            f"[ \"$(docker inspect -f '{{{{.State.Running}}}}' inventiv-{instance_id} 2>/dev/null)\" = true ] || "
            f"{{ id -u {shlex.quote(tenant_user(instance_id))} >/dev/null 2>&1 && "
            f"{privileged(tenant)} 2>/dev/null; }}"
        )

    def _cleanup_command(self, instance_id: str) -> str:
        """Stop the container, or the instance's user and all it left (exit status _NOT_CLEAN
        while something is), or the agent and everything it started, then forget.

        The agent stops its engine on SIGTERM, giving it `engine_stop_timeout_s` (15 s), so the
        wait here is longer (`stop_timeout_s`). The engine runs in a process group of its own
        (its workers with it), which killing the agent's group does not reach: every process
        carrying this instance's id in its environment (the agent hands it to the engine) is
        found through /proc, and its process group is killed with it."""
        remote = shlex.quote(self._remote_dir(instance_id))
        marker = shlex.quote(f"INVENTIV_AGENT_INSTANCE_ID={instance_id}")
        # pids of this machine's processes (readable by us: the same user)
        ours = (
            "ours() { for e in /proc/[0-9]*/environ; do "
            f"{{ tr '\\0' '\\n' < \"$e\"; }} 2>/dev/null | grep -qxF {marker} && "
            '{ p=${e#/proc/}; echo "${p%/environ}"; }; done; }; '
        )
        return (
            f"docker stop -t {self.settings.stop_timeout_s} inventiv-{instance_id} >/dev/null 2>&1; "
            f"docker rm -f inventiv-{instance_id} >/dev/null 2>&1; "
            # the instance's own user first: its agent stops its engine before anything is killed
            f"left=0; if id -u {shlex.quote(tenant_user(instance_id))} >/dev/null 2>&1; then "
            f"{privileged(self._tenant_cleanup_script(instance_id))} || left=$?; fi; "
            + ours
            + f"if [ -f {remote}/agent.pid ]; then pid=$(cat {remote}/agent.pid); "
            'kill -TERM "-$pid" 2>/dev/null; i=0; '
            f'while kill -0 "$pid" 2>/dev/null && [ $i -lt {self.settings.stop_timeout_s} ]; do '
            "sleep 1; i=$((i+1)); done; fi; "
            'for p in $(ours); do g=$(ps -o pgid= -p "$p" | tr -d " "); '
            '[ -n "$g" ] && kill -KILL "-$g" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done; '
            f'rm -rf {remote}; exit "$left"'
        )

    def _tenant_cleanup_script(self, instance_id: str) -> str:
        """Run as root: stop the agent as the shared mode does, then kill every process of the
        instance's user whatever its group or session, and remove its crontab, at jobs, linger,
        IPC objects, files in the world-writable folders, home and the user. Exits _NOT_CLEAN
        while any of it is left."""
        user = shlex.quote(tenant_user(instance_id))
        home = shlex.quote(self._tenant_home(instance_id))
        wait = self.settings.stop_timeout_s
        return (
            f'u={user}; h={home}; uid=$(id -u "$u") || exit 0; '
            'if [ -f "$h/agent.pid" ]; then pid=$(cat "$h/agent.pid"); '
            'kill -TERM "-$pid" 2>/dev/null; i=0; '
            f'while kill -0 "$pid" 2>/dev/null && [ $i -lt {wait} ]; do sleep 1; i=$((i+1)); done; '
            "fi; "
            'i=0; while pkill -KILL -U "$uid" 2>/dev/null && [ $i -lt 50 ]; do '
            "sleep 0.2; i=$((i+1)); done; "
            'crontab -r -u "$u" >/dev/null 2>&1; '
            'rm -f "/var/spool/cron/crontabs/$u" "/var/spool/cron/$u"; '
            "if command -v atq >/dev/null 2>&1; then "
            "for j in $(atq 2>/dev/null | awk -v u=\"$u\" '$NF == u {print $1}'); do "
            'atrm "$j"; done; fi; '
            "if command -v loginctl >/dev/null 2>&1; then "
            'loginctl disable-linger "$u" >/dev/null 2>&1; '
            'loginctl terminate-user "$u" >/dev/null 2>&1; fi; '
            # SysV IPC by owner uid (ipcs truncates long user names): shm, sem, msg tables
            "for t in shm:m:8 sem:s:5 msg:q:8; do f=${t##*:}; k=${t#*:}; k=${k%:*}; "
            'for id in $(awk -v u="$uid" -v f="$f" \'NR > 1 && $f == u {print $2}\' '
            '"/proc/sysvipc/${t%%:*}" 2>/dev/null); do ipcrm -$k "$id"; done; done; '
            "for d in /tmp /var/tmp /dev/shm /run/lock; do "
            '[ -d "$d" ] && find "$d" -xdev -uid "$uid" -delete 2>/dev/null; done; '
            'userdel -r "$u" >/dev/null 2>&1 || userdel -f "$u" >/dev/null 2>&1; '
            'rm -rf "$h"; '
            'if id -u "$u" >/dev/null 2>&1 || [ -e "$h" ] || pgrep -U "$uid" >/dev/null 2>&1; '
            f'then echo "user $u still has processes or files" >&2; exit {_NOT_CLEAN}; fi'
        )

    async def _run(self, conn: asyncssh.SSHClientConnection, command: str) -> None:
        result = await conn.run(command, check=False)
        if result.exit_status != 0:
            raise ProvisioningError(f"remote command failed: {str(result.stderr).strip()}")

    def _to_instance(self, host: BareMetalHost, instance_id: str) -> ProviderInstance:
        return ProviderInstance(
            resource_id=f"{host.id}/{instance_id}",
            instance_id=instance_id,
            state="running",
            ip_address=host.address,
            agent_url=f"http://{host.address}:{host.agent_port}",
            engine_url=f"http://{host.address}:{host.engine_port}",
            created_at=host.claimed_at,
            extra={"host": host.name, "gpus": host.gpu_inventory},
        )

    async def start(self, resource_id: str) -> None:
        """The agent starts during create; a bare-metal host is always powered."""
        if await self._held(resource_id) is None:
            raise InvalidRequestError(f"bare-metal instance {resource_id} does not exist")

    async def get(self, resource_id: str) -> ProviderInstance | None:
        held = await self._held(resource_id)
        return self._to_instance(*held) if held is not None else None

    async def delete(self, resource_id: str) -> None:
        held = await self._held(resource_id)
        if held is None:
            return
        host, instance_id = held
        async with await self._connect(host) as conn:
            cleaned = await conn.run(self._cleanup_command(instance_id), check=False)
            if cleaned.exit_status != 0:
                said = str(cleaned.stderr or "").strip().splitlines()
                raise ResourceNotYetGoneError(
                    f"bare-metal host {host.name}: instance {instance_id} is not gone yet: "
                    + (said[-1] if said else f"exit status {cleaned.exit_status}")
                )
            gpus = await conn.run(GPUS_BUSY, check=False)
            if gpus.exit_status != 0:
                raise ResourceNotYetGoneError(
                    f"bare-metal host {host.name} kept: its GPUs still run "
                    f"{str(gpus.stdout or gpus.stderr or '').strip()} after instance {instance_id}"
                )
        await self.release_host(host.id, instance_id)

    async def list_tagged(self) -> list[ProviderInstance]:
        async with self._sessions() as session:
            hosts = (
                await session.scalars(
                    select(BareMetalHost).where(col(BareMetalHost.claimed_by).is_not(None))
                )
            ).all()
        return [self._to_instance(h, str(h.claimed_by)) for h in hosts]

    async def close(self) -> None:
        await self._engine.dispose()


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(f"not an id: {value!r}") from None
