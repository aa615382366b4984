"""Determinism: recorded histories replay against today's workflow code.

A change that would break workflows already running in production (a reordered activity, a new
timer, a changed signal) fails here. Record new histories deliberately with
`INVENTIV_RECORD_HISTORIES=1 pytest tests/workflows/test_lifecycle.py tests/workflows/test_failure_paths.py`.
"""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.workflows.helpers import HISTORIES
from workers.registration import WORKFLOWS

RECORDED = sorted(HISTORIES.glob("*.json"))


def test_histories_are_recorded() -> None:
    names = {p.stem for p in RECORDED}
    assert {"happy_path", "boot_timeout", "unhealthy_replaced", "drain_in_flight"} <= names


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path) -> None:  # type: ignore[no-untyped-def]
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS)
    await replayer.replay_workflow(history)
