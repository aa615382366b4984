"""ReconcilerWorkflow: on a schedule, make the database and the providers agree."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import ReconcileInput, ReconcileResult
    from activities.reconcile import ReconcileActivities


def reconciler_workflow_id(task_queue: str) -> str:
    """One reconciler per orchestrator task queue (one per Inventiv installation)."""
    return f"reconciler-{task_queue}"


@workflow.defn
class ReconcilerWorkflow:
    def __init__(self) -> None:
        self.last = ReconcileResult()

    @workflow.query
    def last_result(self) -> ReconcileResult:
        return self.last

    @workflow.run
    async def run(self, inp: ReconcileInput) -> None:
        for _ in range(inp.rounds_before_continue):
            try:
                self.last = await workflow.execute_activity_method(
                    ReconcileActivities.reconcile_once,
                    inp,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
            except ActivityError as err:  # a provider outage must not end reconciliation
                workflow.logger.warning("reconcile round failed: %s", err.cause or err)
            inp.missing_since = self.last.missing_since
            await workflow.sleep(timedelta(seconds=inp.interval_s))
        workflow.continue_as_new(inp)
