"""The instance state machine (docs/architecture.md, "State machine").

Every transition is an explicit function. Each one updates the instance only if it is still in an
expected state (a conditional UPDATE, so activity retries are harmless) and writes one row to
`instance_state_history` in the same transaction. Calling a transition again once it has happened
is a no-op (returns False); asking for a transition the current state forbids raises
`IllegalTransitionError`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import (
    Instance,
    InstanceState,
    InstanceStateHistory,
    TerminationReason,
    utcnow,
)

S = InstanceState

LEGAL_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.provisioning: frozenset({S.booting, S.startup_failed, S.terminating, S.provider_deleted}),
    S.booting: frozenset({S.ready, S.startup_failed, S.terminating, S.provider_deleted}),
    S.ready: frozenset({S.draining, S.terminating, S.provider_deleted}),
    S.draining: frozenset({S.terminating, S.provider_deleted}),
    S.startup_failed: frozenset({S.terminating, S.provider_deleted}),
    S.terminating: frozenset({S.terminated, S.provider_deleted}),
    S.terminated: frozenset({S.archived}),
    S.provider_deleted: frozenset({S.archived}),
    S.archived: frozenset(),
}

# States in which a machine may exist at the provider (and costs money).
LIVE_STATES = frozenset(
    {S.provisioning, S.booting, S.ready, S.draining, S.startup_failed, S.terminating}
)
FINAL_STATES = frozenset({S.terminated, S.provider_deleted, S.archived})


class IllegalTransitionError(Exception):
    def __init__(
        self, instance_id: uuid.UUID, current: InstanceState | None, target: InstanceState
    ):
        self.instance_id = instance_id
        self.current = current
        self.target = target
        where = "does not exist" if current is None else f"is {current.value}"
        super().__init__(f"instance {instance_id} {where}; cannot move it to {target.value}")


class UnknownInstanceError(IllegalTransitionError):
    pass


def is_legal_path(states: Iterable[InstanceState]) -> bool:
    """True when consecutive states only take legal transitions (used to audit histories)."""
    seq = list(states)
    return all(b in LEGAL_TRANSITIONS[a] for a, b in pairwise(seq))


async def _transition(
    session: AsyncSession,
    instance_id: uuid.UUID,
    sources: frozenset[InstanceState],
    target: InstanceState,
    *,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    assert all(target in LEGAL_TRANSITIONS[s] for s in sources), "transition table mismatch"
    now = utcnow()
    changes: dict[str, Any] = {"state": target, "updated_at": now, **(values or {})}
    # Read the current state under a row lock so the history row records the true source state.
    current = (
        await session.execute(
            select(col(Instance.state)).where(Instance.id == instance_id).with_for_update()
        )
    ).scalar_one_or_none()
    if current is None:
        await session.rollback()
        raise UnknownInstanceError(instance_id, None, target)
    if current == target:
        await session.rollback()
        return False
    if current not in sources:
        await session.rollback()
        raise IllegalTransitionError(instance_id, current, target)
    await session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.state == current)  # type: ignore[arg-type]
        .values(**changes)
    )
    session.add(
        InstanceStateHistory(
            instance_id=instance_id, from_state=current, to_state=target, reason=reason, at=now
        )
    )
    await session.commit()
    return True


async def provisioning_to_booting(session: AsyncSession, instance_id: uuid.UUID) -> bool:
    return await _transition(
        session, instance_id, frozenset({S.provisioning}), S.booting, reason="created at provider"
    )


async def booting_to_ready(session: AsyncSession, instance_id: uuid.UUID) -> bool:
    return await _transition(
        session,
        instance_id,
        frozenset({S.booting}),
        S.ready,
        reason="health check passed",
        values={"ready_at": utcnow()},
    )


async def _startup_failed(
    session: AsyncSession,
    instance_id: uuid.UUID,
    source: InstanceState,
    reason: TerminationReason,
    error: str,
) -> bool:
    return await _transition(
        session,
        instance_id,
        frozenset({source}),
        S.startup_failed,
        reason=error,
        values={"termination_reason": reason, "error": error},
    )


async def provisioning_to_startup_failed(
    session: AsyncSession, instance_id: uuid.UUID, *, reason: TerminationReason, error: str
) -> bool:
    return await _startup_failed(session, instance_id, S.provisioning, reason, error)


async def booting_to_startup_failed(
    session: AsyncSession, instance_id: uuid.UUID, *, reason: TerminationReason, error: str
) -> bool:
    return await _startup_failed(session, instance_id, S.booting, reason, error)


async def ready_to_draining(
    session: AsyncSession, instance_id: uuid.UUID, *, reason: TerminationReason
) -> bool:
    return await _transition(
        session,
        instance_id,
        frozenset({S.ready}),
        S.draining,
        reason=reason.value,
        values={"termination_reason": reason},
    )


async def to_terminating(
    session: AsyncSession,
    instance_id: uuid.UUID,
    *,
    reason: TerminationReason,
    error: str | None = None,
) -> bool:
    """Any live state -> terminating. The first recorded termination reason is kept."""
    current = (
        await session.execute(
            select(col(Instance.termination_reason)).where(Instance.id == instance_id)
        )
    ).scalar_one_or_none()
    values: dict[str, Any] = {"termination_reason": current or reason}
    if error is not None:
        values["error"] = error
    return await _transition(
        session,
        instance_id,
        frozenset({S.provisioning, S.booting, S.ready, S.draining, S.startup_failed}),
        S.terminating,
        reason=(current or reason).value,
        values=values,
    )


async def terminating_to_terminated(session: AsyncSession, instance_id: uuid.UUID) -> bool:
    return await _transition(
        session,
        instance_id,
        frozenset({S.terminating}),
        S.terminated,
        reason="server and volumes deleted",
        values={"terminated_at": utcnow()},
    )


async def mark_provider_deleted(
    session: AsyncSession,
    instance_id: uuid.UUID,
    sources: frozenset[InstanceState] = LIVE_STATES,
) -> bool:
    """Any live state (or only `sources`) -> provider_deleted: the machine was found gone at the
    provider."""
    return await _transition(
        session,
        instance_id,
        sources,
        S.provider_deleted,
        reason="machine not found at provider",
        values={
            "termination_reason": TerminationReason.provider_deleted,
            "terminated_at": utcnow(),
        },
    )


async def to_archived(session: AsyncSession, instance_id: uuid.UUID) -> bool:
    return await _transition(
        session,
        instance_id,
        frozenset({S.terminated, S.provider_deleted}),
        S.archived,
        reason="retention period over",
    )
