"""The instance state machine: every legal transition, illegal ones refused, one history row per
transition in the same transaction, a repeat is a no-op."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlmodel import col, select

from core import states
from core.models import Instance, InstanceState, InstanceStateHistory, TerminationReason
from tests.factories import seed

S = InstanceState
R = TerminationReason

# Each transition function and the (source, target) it performs.
Transition = Callable[[Any, uuid.UUID], Awaitable[bool]]
TRANSITIONS: list[tuple[str, Transition, S, S]] = [
    ("provisioning_to_booting", states.provisioning_to_booting, S.provisioning, S.booting),
    ("booting_to_ready", states.booting_to_ready, S.booting, S.ready),
    (
        "provisioning_to_startup_failed",
        lambda s, i: states.provisioning_to_startup_failed(s, i, reason=R.error, error="boom"),
        S.provisioning,
        S.startup_failed,
    ),
    (
        "booting_to_startup_failed",
        lambda s, i: states.booting_to_startup_failed(s, i, reason=R.boot_timeout, error="late"),
        S.booting,
        S.startup_failed,
    ),
    (
        "ready_to_draining",
        lambda s, i: states.ready_to_draining(s, i, reason=R.scale_down),
        S.ready,
        S.draining,
    ),
    *[
        (
            f"{source.value}_to_terminating",
            lambda s, i: states.to_terminating(s, i, reason=R.user_request),
            source,
            S.terminating,
        )
        for source in (S.provisioning, S.booting, S.ready, S.draining, S.startup_failed)
    ],
    ("terminating_to_terminated", states.terminating_to_terminated, S.terminating, S.terminated),
    *[
        (
            f"{source.value}_provider_deleted",
            states.mark_provider_deleted,
            source,
            S.provider_deleted,
        )
        for source in sorted(states.LIVE_STATES)
    ],
    ("terminated_to_archived", states.to_archived, S.terminated, S.archived),
    ("provider_deleted_to_archived", states.to_archived, S.provider_deleted, S.archived),
]


def test_the_table_covers_every_legal_transition() -> None:
    covered = {(src, dst) for _, _, src, dst in TRANSITIONS}
    legal = {(src, dst) for src, targets in states.LEGAL_TRANSITIONS.items() for dst in targets}
    assert covered == legal


async def _instance_in(sessionmaker: Any, state: S) -> uuid.UUID:
    async with sessionmaker() as session:
        seeded = await seed(session)
        instance = Instance(
            deployment_id=seeded.deployment.id,
            project_id=seeded.project.id,
            provider_id=seeded.provider.id,
            instance_type_id=seeded.instance_type.id,
            workflow_id="instance-test",
            state=state,
        )
        session.add(instance)
        await session.commit()
        return instance.id


async def _history(sessionmaker: Any, instance_id: uuid.UUID) -> list[InstanceStateHistory]:
    async with sessionmaker() as session:
        rows = await session.exec(
            select(InstanceStateHistory)
            .where(InstanceStateHistory.instance_id == instance_id)
            .order_by(col(InstanceStateHistory.id))
        )
        return list(rows.all())


@pytest.mark.parametrize(
    ("name", "move", "source", "target"), TRANSITIONS, ids=[t[0] for t in TRANSITIONS]
)
async def test_legal_transition_writes_history_and_repeat_is_a_noop(
    sessionmaker: Any, name: str, move: Transition, source: S, target: S
) -> None:
    instance_id = await _instance_in(sessionmaker, source)
    async with sessionmaker() as session:
        assert await move(session, instance_id) is True
    async with sessionmaker() as session:
        instance = await session.get(Instance, instance_id)
        assert instance is not None and instance.state == target
    [row] = await _history(sessionmaker, instance_id)
    assert (row.from_state, row.to_state) == (source, target)

    async with sessionmaker() as session:
        assert await move(session, instance_id) is False  # already there: nothing happens
    assert len(await _history(sessionmaker, instance_id)) == 1


@pytest.mark.parametrize(
    ("name", "move", "source", "target"), TRANSITIONS, ids=[t[0] for t in TRANSITIONS]
)
async def test_transition_from_a_wrong_state_is_refused(
    sessionmaker: Any, name: str, move: Transition, source: S, target: S
) -> None:
    wrong = next(s for s in S if s != target and target not in states.LEGAL_TRANSITIONS[s])
    instance_id = await _instance_in(sessionmaker, wrong)
    async with sessionmaker() as session:
        with pytest.raises(states.IllegalTransitionError) as refused:
            await move(session, instance_id)
    assert f"is {wrong.value}" in str(refused.value) and target.value in str(refused.value)
    async with sessionmaker() as session:
        instance = await session.get(Instance, instance_id)
        assert instance is not None and instance.state == wrong
    assert await _history(sessionmaker, instance_id) == []


async def test_unknown_instance_is_a_clear_error(sessionmaker: Any) -> None:
    async with sessionmaker() as session:
        with pytest.raises(states.UnknownInstanceError, match="does not exist"):
            await states.booting_to_ready(session, uuid.uuid4())


async def test_first_termination_reason_is_kept(sessionmaker: Any) -> None:
    instance_id = await _instance_in(sessionmaker, S.ready)
    async with sessionmaker() as session:
        await states.ready_to_draining(session, instance_id, reason=R.scale_down)
    async with sessionmaker() as session:
        await states.to_terminating(session, instance_id, reason=R.user_request)
    async with sessionmaker() as session:
        instance = await session.get(Instance, instance_id)
        assert instance is not None and instance.termination_reason == R.scale_down


def test_legal_path_audit() -> None:
    assert states.is_legal_path([S.provisioning, S.booting, S.ready, S.draining, S.terminating])
    assert not states.is_legal_path([S.provisioning, S.ready])
    assert not states.is_legal_path([S.terminated, S.booting])
