"""AutoscalerWorkflow: one per deployment with autoscaling on (id `autoscaler-<deployment id>`).

Each round reads the load and applies the pure policy in core/autoscaling.py (activity
`assess`, which stores the decision), then starts instances or drains the ones the policy chose
(reason `scale_down`). The policy's memory (`PolicyState`: when each condition began) rides in
the input through continue-as-new. A `wake` signal (a request waiting with no instance, sent by
the worker's listener for the gateways) starts the next round at once. The workflow ends when
the deployment's autoscaling is turned off.

Restarts: the round's decision id and the new instances' ids come from the workflow
(`workflow.uuid4`, replayed identically), so a worker killed mid-round re-runs the activity with
the same ids: `assess` returns the stored decision, `scale_up` creates nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.autoscale import AutoscaleActivities
    from activities.contracts import AssessInput, ScaleDownInput, ScaleUpInput, ScalingPlan
    from core.autoscaling import PolicyState


def autoscaler_workflow_id(deployment_id: str) -> str:
    return f"autoscaler-{deployment_id}"


@dataclass
class AutoscaleInput:
    deployment_id: str
    interval_s: float = 15.0
    state: PolicyState = field(default_factory=PolicyState)  # carried by continue-as-new
    rounds_before_continue: int = 200


@workflow.defn
class AutoscalerWorkflow:
    def __init__(self) -> None:
        self.last = ScalingPlan(enabled=True, delta=0, reason="starting")
        self.woken = False

    @workflow.query
    def last_plan(self) -> ScalingPlan:
        return self.last

    @workflow.signal
    def wake(self) -> None:
        """Requests are waiting with no instance: decide now rather than at the next tick."""
        self.woken = True

    @workflow.run
    async def run(self, inp: AutoscaleInput) -> str:
        for _ in range(inp.rounds_before_continue):
            self.woken = False
            now = workflow.now().timestamp()
            decision_id = str(workflow.uuid4())
            try:
                self.last = await workflow.execute_activity_method(
                    AutoscaleActivities.assess,
                    AssessInput(inp.deployment_id, decision_id, now, inp.state),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                )
            except ActivityError as err:  # a database blip must not end autoscaling
                workflow.logger.warning("autoscaler round failed: %s", err.cause or err)
                await self._pause(inp.interval_s)
                continue
            if not self.last.enabled:
                return "autoscaling turned off"
            inp = replace(inp, state=self.last.state)
            if self.last.delta > 0:
                ids = [str(workflow.uuid4()) for _ in range(self.last.delta)]
                await workflow.execute_activity_method(
                    AutoscaleActivities.scale_up,
                    ScaleUpInput(inp.deployment_id, decision_id, ids, self.last.reason),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
            elif self.last.drain_instance_ids:
                await workflow.execute_activity_method(
                    AutoscaleActivities.scale_down,
                    ScaleDownInput(
                        inp.deployment_id,
                        decision_id,
                        self.last.drain_instance_ids,
                        self.last.reason,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
            await self._pause(inp.interval_s)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)

    async def _pause(self, interval_s: float) -> None:
        """Until the next tick, or a wake-up."""
        try:
            await workflow.wait_condition(lambda: self.woken, timeout=timedelta(seconds=interval_s))
        except TimeoutError:
            pass
