"""Machines that joined through the outbound tunnel, lent to one instance at a time.

Nothing here reaches the machine: the adapter writes what the machine should run into its row
(`claimed_by`, `desired_env`: the agent's environment without secrets) and the tunnel endpoint
holding the machine's connection (tunnel/hub.py) tells the agent to start or stop its engine.
Booting then goes through the relay like any instance: `engine_url` and `agent_url` are the
relay's addresses for this machine, so the gateway and the health checks need no special case.

A claim picks a connected, unrevoked machine of the instance's project (or a shared one) that
its owner's sharing rules make available now (core/machine_sharing.py). Deleting stops the
engine and releases the machine; it never powers anything off.

Resource ids are `<machine id>/<instance id>`: a stale id never touches the machine's next tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlmodel import col, select

from activities.providers.base import (
    CapacityMixin,
    Compute,
    CreateRequest,
    InstanceOffer,
    InvalidRequestError,
    NoCapacityError,
    ProviderInstance,
)
from activities.providers.flavors import agent_environment, get_flavor
from activities.providers.tunnel.catalogue import offers
from activities.providers.tunnel.settings import TunnelSettings
from core.db import make_engine, make_sessionmaker
from core.machine_sharing import availability, local_day, parse_sharing
from core.models import Instance, Machine, MachineUsage, utcnow
from core.settings import Settings

# Never written to the machine's row: the tunnel endpoint relays heartbeats with the instance's
# token, derives the engine's key when it sends the run, and the machine proves itself with its
# own credential.
_NOT_STORED = frozenset(
    {
        "INVENTIV_AGENT_TOKEN",
        "INVENTIV_AGENT_ENGINE_API_KEY",
        "INVENTIV_AGENT_HF_TOKEN",
        "INVENTIV_AGENT_CONTROL_PLANE_URL",
        "WORKER_AGENT_URL",
        "WORKER_AGENT_SHA256",
    }
)


Clock = Callable[[], datetime]


def connected(machine: Machine) -> bool:
    return machine.connected_at is not None and (
        machine.disconnected_at is None or machine.disconnected_at < machine.connected_at
    )


async def used_gpu_hours(session: Any, machine: Machine, now: Any) -> float:
    day = local_day(now, parse_sharing(machine.timezone, [], None, None).tz)
    usage = await session.get(MachineUsage, (machine.id, day))
    return usage.gpu_seconds / 3600 if usage is not None else 0.0


class TunnelCompute(CapacityMixin, Compute):
    kind = "tunnel"

    def __init__(
        self, settings: TunnelSettings, database_url: str, *, clock: Clock = utcnow
    ) -> None:
        self.settings = settings
        self.clock = clock  # a test's simulated time walks a slot to its end
        self._engine = make_engine(database_url, pool_size=2)
        self._sessions = make_sessionmaker(self._engine)

    @classmethod
    def from_settings(cls, provider_settings: Any, settings: Settings) -> TunnelCompute:
        return cls(provider_settings, settings.require("database_url"))

    def catalogue(self) -> list[InstanceOffer]:
        return offers(self.settings)

    async def _claim(self, instance_id: uuid.UUID, instance_type: str) -> Machine | None:
        """The machine this instance holds, else an available one claimed atomically (its own
        project's machines first, then shared ones)."""
        async with self._sessions() as session:
            held = await session.scalar(
                select(Machine).where(col(Machine.claimed_by) == instance_id)
            )
            if held is not None:
                return held
            project = await session.scalar(
                select(col(Instance.project_id)).where(col(Instance.id) == instance_id)
            )
            for machine in await self._available(session, instance_type, project):
                claimed = await session.scalar(
                    update(Machine)
                    .where(col(Machine.id) == machine.id, col(Machine.claimed_by).is_(None))
                    .values(claimed_by=instance_id, claimed_at=func.now())
                    .returning(col(Machine.id))
                )
                await session.commit()
                if claimed is not None:
                    await session.refresh(machine)
                    return machine
            return None

    async def _available(
        self, session: Any, instance_type: str, project_id: uuid.UUID | None
    ) -> list[Machine]:
        """Unclaimed machines of this type the project may use that are connected and inside
        their owner's slots and quotas now (its own project's first, then shared ones)."""
        candidates = (
            await session.scalars(
                select(Machine)
                .where(
                    col(Machine.claimed_by).is_(None),
                    col(Machine.revoked_at).is_(None),
                    col(Machine.instance_type) == instance_type,
                    or_(col(Machine.project_id).is_(None), col(Machine.project_id) == project_id),
                )
                .order_by(col(Machine.project_id).is_(None), col(Machine.created_at))
            )
        ).all()
        now = self.clock()
        lead = timedelta(seconds=self.settings.drain_lead_s)
        available = []
        for machine in candidates:
            if not connected(machine):
                continue
            sharing = parse_sharing(
                machine.timezone, machine.slots, machine.quota_gpus,
                machine.quota_gpu_hours_per_day,
            )  # fmt: skip
            used = await used_gpu_hours(session, machine, now)
            if availability(
                sharing, now=now, gpus=machine.gpu_count, used_gpu_hours_today=used, lead=lead
            ).available:
                available.append(machine)
        return available

    async def available_now(self, instance_type: str, project_id: uuid.UUID) -> int:
        async with self._sessions() as session:
            return len(await self._available(session, instance_type, project_id))

    async def create(self, request: CreateRequest) -> ProviderInstance:
        get_flavor(request.flavor)  # an unknown flavor fails before a machine is claimed
        if request.volumes:
            raise InvalidRequestError(
                "tunnelled machines have no provider volumes: drop the deployment's volumes"
            )
        instance_id = _uuid(request.instance_id)
        machine = await self._claim(instance_id, request.instance_type)
        if machine is None:
            raise NoCapacityError(
                f"no connected machine of type {request.instance_type!r} is available now "
                "(enrolled, online, within its owner's time slots and quotas)"
            )
        env = {
            key: value
            for key, value in agent_environment(request).items()
            if key not in _NOT_STORED
        }
        async with self._sessions() as session:
            await session.execute(
                update(Machine)
                .where(col(Machine.id) == machine.id, col(Machine.claimed_by) == instance_id)
                .values(desired_env=env)
            )
            await session.commit()
        return self._to_instance(machine, request.instance_id)

    async def _held(self, resource_id: str) -> Machine | None:
        machine_id, _, instance_id = resource_id.partition("/")
        async with self._sessions() as session:
            machine = await session.get(Machine, _uuid(machine_id))
        if machine is None or str(machine.claimed_by) != instance_id:
            return None
        return machine

    def _to_instance(self, machine: Machine, instance_id: str) -> ProviderInstance:
        online = connected(machine)
        serving = online and machine.running_instance == instance_id
        base = machine.relay_url
        return ProviderInstance(
            resource_id=f"{machine.id}/{instance_id}",
            instance_id=instance_id,
            state="running" if serving else "pending",
            # no address until the tunnel is up: booting waits for it
            ip_address=machine.remote_address if online else None,
            agent_url=f"{base}/agent" if base else None,
            engine_url=f"{base}/engine" if base else None,
            created_at=machine.claimed_at,
            extra={"machine": machine.name, "path": "tunnel", "gpus": machine.gpu_inventory},
        )

    async def start(self, resource_id: str) -> None:
        """The tunnel endpoint starts the engine once the claim is written; nothing to power on."""
        if await self._held(resource_id) is None:
            raise InvalidRequestError(f"tunnelled instance {resource_id} does not exist")

    async def get(self, resource_id: str) -> ProviderInstance | None:
        machine = await self._held(resource_id)
        return self._to_instance(machine, resource_id.partition("/")[2]) if machine else None

    async def delete(self, resource_id: str) -> None:
        """Release the machine: the tunnel endpoint sees the claim gone and stops the engine (at
        once when connected, at its next connection otherwise). Never powers the machine off."""
        machine_id, _, instance_id = resource_id.partition("/")
        async with self._sessions() as session:
            await session.execute(
                update(Machine)
                .where(
                    col(Machine.id) == _uuid(machine_id),
                    col(Machine.claimed_by) == _uuid(instance_id),
                )
                .values(claimed_by=None, claimed_at=None, desired_env=None)
            )
            await session.commit()

    async def list_tagged(self) -> list[ProviderInstance]:
        async with self._sessions() as session:
            machines = (
                await session.scalars(select(Machine).where(col(Machine.claimed_by).is_not(None)))
            ).all()
        return [self._to_instance(m, str(m.claimed_by)) for m in machines]

    async def close(self) -> None:
        await self._engine.dispose()


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(f"not an id: {value!r}") from None
