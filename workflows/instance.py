"""InstanceWorkflow: one per instance (id `instance-<uuid>`), its whole life.

provisioning -> booting -> ready -> draining -> terminating -> terminated -> archived, with
startup_failed and provider_deleted on the side. Whatever fails after the provider created
something ends in cleanup: termination activities retry until they succeed, so nothing is left
running or billed at a provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as TimeoutError_

with workflow.unsafe.imports_passed_through():
    from activities.instance import InstanceActivities
    from core.progress import Step
    from workflows.types import (
        DrainInput,
        FailInput,
        InstanceRef,
        InstanceWorkflowInput,
        InstanceWorkflowState,
        LifecycleSpec,
        ReplacementInput,
        RoutingInput,
        StepInput,
        TerminateInput,
        VolumeRef,
    )

BOOT_STEPS = [
    Step.provider_start,
    Step.ip_assigned,
    Step.agent_installed,
    Step.engine_http_up,
    Step.model_loaded,
    Step.warmup,
    Step.health_check,
]

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


def quick(method: Callable[[Any, ArgT], Awaitable[ResultT]], arg: ArgT) -> Awaitable[ResultT]:
    """A quick database/Redis activity. Attempts are not counted: a worker that crashes
    mid-activity is not the activity's fault; the overall budget bounds them instead."""
    return workflow.execute_activity_method(
        method,
        arg,
        start_to_close_timeout=timedelta(seconds=15),
        schedule_to_close_timeout=timedelta(minutes=30),
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
    )


def cleanup(method: Callable[[Any, ArgT], Awaitable[ResultT]], arg: ArgT) -> Awaitable[ResultT]:
    """A cleanup activity: it never gives up, since a machine left at a provider costs money."""
    return workflow.execute_activity_method(
        method,
        arg,
        start_to_close_timeout=timedelta(minutes=5),
        heartbeat_timeout=timedelta(seconds=10),
        retry_policy=RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=30),
            maximum_attempts=0,
        ),
    )


def failure_message(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    return str(cause) or type(cause).__name__


@workflow.defn
class InstanceWorkflow:
    @workflow.init
    def __init__(self, inp: InstanceWorkflowInput) -> None:
        # State is built here, not in run(): a signal delivered with the start (before run()
        # begins) must land in the state the workflow will use.
        self.state = inp.state or InstanceWorkflowState(instance_id=inp.instance_id)

    # ------------------------------------------------------------ signals and queries

    @workflow.signal
    def drain(self, reason: str = "user_request") -> None:
        """Leave routing, let in-flight requests finish (up to the drain deadline), terminate."""
        self.state.drain_requested = True
        self.state.termination_reason = self.state.termination_reason or reason

    @workflow.signal
    def terminate(self, reason: str = "user_request") -> None:
        """Terminate now (a ready instance is drained first)."""
        self.state.terminate_requested = True
        self.state.termination_reason = self.state.termination_reason or reason

    @workflow.signal
    def provider_deleted(self) -> None:
        """The reconciler found the machine gone at the provider."""
        self.state.provider_deleted = True

    @workflow.query
    def status(self) -> InstanceWorkflowState:
        return self.state

    def _stop_wanted(self) -> bool:
        s = self.state
        return s.terminate_requested or s.drain_requested or s.provider_deleted

    # ------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: InstanceWorkflowInput) -> str:
        ref = InstanceRef(self.state.instance_id)
        spec: LifecycleSpec = await quick(InstanceActivities.load_spec, ref)
        if self.state.phase == "start":
            await self._provision_and_boot(ref, spec)
        if self.state.phase == "ready":
            await self._serve(ref, spec)
        if self.state.phase == "provider_deleted":
            await self._cleanup_after_provider_deleted(ref)
        elif self.state.phase == "terminating":
            await self._terminate(ref, spec)
        if self.state.phase == "done":
            await workflow.sleep(timedelta(seconds=spec.archive_after_s))
            await quick(InstanceActivities.archive, ref)
        return self.state.termination_reason or "archived"

    async def _provision_and_boot(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        await quick(InstanceActivities.record_request, ref)
        deadline = workflow.now() + timedelta(seconds=spec.boot_timeout_s)
        try:
            # Transient provider errors and worker crashes are retried until the boot deadline;
            # typed non-retryable errors (no capacity, invalid request) stop at once.
            created = await workflow.execute_activity_method(
                InstanceActivities.provider_create,
                ref,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(seconds=spec.boot_timeout_s),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            self.state.resource_id = created.resource_id
            self.state.phase = "booting"
            if self._stop_wanted():
                raise _StopRequested()
            boot = asyncio.ensure_future(self._boot(ref, spec, deadline))
            await workflow.wait_condition(lambda: boot.done() or self._stop_wanted())
            if not boot.done():
                boot.cancel()
                with _suppress_cancel():
                    await boot
                raise _StopRequested()
            boot.result()
            self.state.phase = "ready"
        except _StopRequested:
            self.state.phase = "provider_deleted" if self.state.provider_deleted else "terminating"
        except _BootTimeout:
            await self._fail(ref, "boot_timeout", f"not ready within {spec.boot_timeout_s:.0f}s")
        except ActivityError as err:
            await self._fail(ref, "startup_error", failure_message(err))

    async def _boot(self, ref: InstanceRef, spec: LifecycleSpec, deadline: object) -> None:
        assert self.state.resource_id is not None
        for step in BOOT_STEPS:
            remaining = (deadline - workflow.now()).total_seconds()  # type: ignore[operator]
            if remaining <= 0:
                raise _BootTimeout()
            step_input = StepInput(
                instance_id=ref.instance_id,
                resource_id=self.state.resource_id,
                step=step,
                timeout_s=remaining,
                poll_interval_s=spec.poll_interval_s,
            )
            try:
                await workflow.execute_activity_method(
                    InstanceActivities.boot_step,
                    step_input,
                    schedule_to_close_timeout=timedelta(seconds=remaining),
                    heartbeat_timeout=timedelta(seconds=max(10, spec.poll_interval_s * 10)),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
                )
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == "StepTimeout":
                    raise _BootTimeout() from err
                if isinstance(cause, TimeoutError_):
                    raise _BootTimeout() from err
                raise
        await quick(InstanceActivities.mark_ready, ref)

    async def _fail(self, ref: InstanceRef, reason: str, error: str) -> None:
        await quick(InstanceActivities.fail_startup, FailInput(ref.instance_id, reason, error))
        self.state.termination_reason = self.state.termination_reason or reason
        self.state.phase = "terminating"

    # ------------------------------------------------------------ ready

    async def _serve(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        rounds = 0
        while not self._stop_wanted():
            if (
                rounds >= spec.health_rounds_per_run
                or workflow.info().is_continue_as_new_suggested()
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(InstanceWorkflowInput(ref.instance_id, self.state))
            rounds += 1
            try:
                await workflow.wait_condition(
                    self._stop_wanted, timeout=timedelta(seconds=spec.health_interval_s)
                )
                break
            except TimeoutError:
                pass  # time for the next health check
            health = await quick(
                InstanceActivities.check_health,
                StepInput(ref.instance_id, self.state.resource_id or ""),
            )
            if health.gone:
                self.state.provider_deleted = True
                break
            self.state.failed_checks = 0 if health.healthy else self.state.failed_checks + 1
            if self.state.failed_checks >= spec.unhealthy_threshold:
                await self._replace_unhealthy(ref, health.detail)
                return
        if self.state.provider_deleted:
            self.state.phase = "provider_deleted"
            return
        reason = self.state.termination_reason or "user_request"
        drain = DrainInput(ref.instance_id, reason, spec.drain_timeout_s, spec.poll_interval_s)
        if await quick(InstanceActivities.begin_drain, drain):
            await workflow.execute_activity_method(
                InstanceActivities.wait_drained,
                drain,
                start_to_close_timeout=timedelta(seconds=spec.drain_timeout_s + 60),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        self.state.phase = "terminating"

    async def _replace_unhealthy(self, ref: InstanceRef, detail: str) -> None:
        error = f"{self.state.failed_checks} failed health checks: {detail}"
        await quick(
            InstanceActivities.record_unhealthy, FailInput(ref.instance_id, "unhealthy", error)
        )
        if self.state.replacement_id is None:
            self.state.replacement_id = str(workflow.uuid4())
        await quick(
            InstanceActivities.start_replacement,
            ReplacementInput(ref.instance_id, self.state.replacement_id),
        )
        self.state.termination_reason = "unhealthy"
        self.state.phase = "terminating"

    # ------------------------------------------------------------ terminate

    async def _terminate(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        reason = self.state.termination_reason or "error"
        state = await quick(
            InstanceActivities.begin_terminate, TerminateInput(ref.instance_id, reason)
        )
        if state == "provider_deleted":
            await self._cleanup_after_provider_deleted(ref)
            return
        plan = await cleanup(InstanceActivities.discover_volumes, ref)
        await cleanup(InstanceActivities.delete_server, ref)
        await cleanup(
            InstanceActivities.confirm_gone,
            StepInput(ref.instance_id, self.state.resource_id or "", timeout_s=240),
        )
        await self._delete_volumes(ref, plan.delete)
        await cleanup(InstanceActivities.finish_termination, ref)
        self.state.phase = "done"

    async def _delete_volumes(self, ref: InstanceRef, volume_ids: list[str]) -> None:
        for volume_id in volume_ids:
            await cleanup(InstanceActivities.delete_volume, VolumeRef(ref.instance_id, volume_id))

    async def _cleanup_after_provider_deleted(self, ref: InstanceRef) -> None:
        """The machine is gone; its volumes may not be. Delete those meant to go with it."""
        await quick(InstanceActivities.set_routable, RoutingInput(ref.instance_id, False))
        plan = await cleanup(InstanceActivities.discover_volumes, ref)
        await self._delete_volumes(ref, plan.delete)
        self.state.termination_reason = self.state.termination_reason or "provider_deleted"
        self.state.phase = "done"


class _StopRequested(Exception):
    pass


class _BootTimeout(Exception):
    pass


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is not None and issubclass(
            exc_type,  # type: ignore[arg-type]
            (asyncio.CancelledError, CancelledError, ActivityError),
        )
