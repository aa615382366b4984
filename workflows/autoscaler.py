"""AutoscalerWorkflow: one per deployment with autoscaling on (id `autoscaler-<deployment id>`).

Each round reads the load, applies the pure policy in core/autoscaling.py and starts instances or
drains the least loaded ones (reason `scale_down`). Cooldowns ride in the input through
continue-as-new. The workflow ends when the deployment's autoscaling is turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.autoscale import AutoscaleActivities
    from activities.contracts import AssessInput, ScaleDownInput, ScaleUpInput, ScalingPlan


def autoscaler_workflow_id(deployment_id: str) -> str:
    return f"autoscaler-{deployment_id}"


@dataclass
class AutoscaleInput:
    deployment_id: str
    interval_s: float = 15.0
    last_scale_up: float = 0.0  # epoch seconds of the last scale-up (carried by continue-as-new)
    last_scale_down: float = 0.0
    rounds_before_continue: int = 200


@workflow.defn
class AutoscalerWorkflow:
    def __init__(self) -> None:
        self.last = ScalingPlan(enabled=True, delta=0, reason="starting")

    @workflow.query
    def last_plan(self) -> ScalingPlan:
        return self.last

    @workflow.run
    async def run(self, inp: AutoscaleInput) -> str:
        for _ in range(inp.rounds_before_continue):
            now = workflow.now().timestamp()
            try:
                self.last = await workflow.execute_activity_method(
                    AutoscaleActivities.assess,
                    AssessInput(inp.deployment_id, now, inp.last_scale_up, inp.last_scale_down),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                )
            except ActivityError as err:  # a database blip must not end autoscaling
                workflow.logger.warning("autoscaler round failed: %s", err.cause or err)
                await workflow.sleep(timedelta(seconds=inp.interval_s))
                continue
            if not self.last.enabled:
                return "autoscaling turned off"
            if self.last.delta > 0:
                ids = [str(workflow.uuid4()) for _ in range(self.last.delta)]
                await workflow.execute_activity_method(
                    AutoscaleActivities.scale_up,
                    ScaleUpInput(inp.deployment_id, ids, self.last.reason),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
                inp = replace(inp, last_scale_up=now)
            elif self.last.delta < 0 and self.last.drain_instance_ids:
                await workflow.execute_activity_method(
                    AutoscaleActivities.scale_down,
                    ScaleDownInput(
                        inp.deployment_id, self.last.drain_instance_ids, self.last.reason
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
                inp = replace(inp, last_scale_down=now)
            await workflow.sleep(timedelta(seconds=inp.interval_s))
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
