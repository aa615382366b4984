"""InstanceWorkflow: one per instance (id `instance-<uuid>`), its whole life.

provisioning -> booting -> ready -> draining -> terminating -> terminated -> archived, with
startup_failed and provider_deleted on the side: the state machine of core/states.py, which the
workflow follows too (`state.phase`, each move checked against its legal transitions) while its
activities move the database. Whatever fails after the provider created something ends in
cleanup: termination activities retry until they succeed, so nothing is left running or billed at
a provider. The rule (docs/architecture.md, "Orchestration"): every path ends in `ready`, in
`terminated` with every deletable volume deleted, or in a visible "needs attention" flag on the
instance while a cleanup step keeps retrying; never in a failed workflow.

Drain and terminate are updates: their validators refuse what the phase forbids, so the caller
(the API, the autoscaler) learns at once whether the command was taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as TimeoutError_

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        AttentionInput,
        BootStepInput,
        DrainInput,
        FailInput,
        HealthInput,
        InstanceRef,
        LifecycleSpec,
        ReplacementInput,
        RoutingInput,
        TerminateInput,
        VolumeRef,
    )
    from activities.instance import (
        BootActivities,
        DrainActivities,
        HealthActivities,
        ProvisionActivities,
        TeardownActivities,
    )
    from core.models import InstanceState, TerminationReason
    from core.progress import Step
    from core.states import LEGAL_TRANSITIONS

S = InstanceState

BOOT_STEPS = [
    Step.provider_start,
    Step.ip_assigned,
    Step.agent_installed,
    Step.engine_http_up,
    Step.model_loaded,
    Step.warmup,
    Step.health_check,
]


@dataclass
class InstanceWorkflowState:
    """The workflow's whole state; continue-as-new carries it to the next run."""

    instance_id: str
    # Where the workflow is in the state machine; the database follows through the activities.
    phase: InstanceState = S.provisioning
    resource_id: str | None = None  # set once the provider created the machine
    drain_requested: bool = False
    terminate_requested: bool = False
    termination_reason: TerminationReason | None = None
    provider_deleted: bool = False
    failed_checks: int = 0
    replacement_id: str | None = None
    cleaned_up: bool = False  # nothing of the instance is left at the provider


@dataclass
class InstanceWorkflowInput:
    instance_id: str
    state: InstanceWorkflowState | None = None


ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


def quick(method: Callable[[Any, ArgT], Awaitable[ResultT]], arg: ArgT) -> Awaitable[ResultT]:
    """A quick database/Redis activity. It has no overall deadline: an outage of PostgreSQL or
    Redis (or a worker crashing mid-activity) only delays it; typed errors still stop it."""
    return workflow.execute_activity_method(
        method,
        arg,
        start_to_close_timeout=timedelta(seconds=15),
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
    )


def failure_message(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    return str(cause) or type(cause).__name__


@workflow.defn
class InstanceWorkflow:
    @workflow.init
    def __init__(self, inp: InstanceWorkflowInput) -> None:
        # State is built here, not in run(): a command delivered with the start (before run()
        # begins) must land in the state the workflow will use.
        self.state = inp.state or InstanceWorkflowState(instance_id=inp.instance_id)

    # ------------------------------------------------------------ commands and queries

    @workflow.update
    def drain(self, reason: TerminationReason = TerminationReason.user_request) -> None:
        """Leave routing, let in-flight requests finish (up to the drain deadline), terminate."""
        self.state.drain_requested = True
        self.state.termination_reason = self.state.termination_reason or reason

    @drain.validator
    def validate_drain(self, reason: TerminationReason = TerminationReason.user_request) -> None:
        if self.state.phase not in (S.ready, S.draining):
            raise ApplicationError(
                f"instance is {self.state.phase}: only a ready instance can be drained "
                "(use DELETE to terminate it)",
                type="CommandRefused",
            )

    @workflow.update
    def terminate(self, reason: TerminationReason = TerminationReason.user_request) -> None:
        """Terminate now (a ready instance is drained first)."""
        self.state.terminate_requested = True
        self.state.termination_reason = self.state.termination_reason or reason

    @terminate.validator
    def validate_terminate(
        self, reason: TerminationReason = TerminationReason.user_request
    ) -> None:
        if self.state.phase in (S.terminating, S.terminated, S.provider_deleted, S.archived):
            raise ApplicationError(f"instance is already {self.state.phase}", type="CommandRefused")

    @workflow.signal
    def provider_deleted(self) -> None:
        """The reconciler found the machine gone at the provider (a fact, never refused)."""
        self.state.provider_deleted = True

    @workflow.query
    def status(self) -> InstanceWorkflowState:
        return self.state

    def _stop_wanted(self) -> bool:
        s = self.state
        return s.terminate_requested or s.drain_requested or s.provider_deleted

    def _move(self, target: InstanceState) -> None:
        """Follow the state machine of core/states.py (a repeat is a no-op). An illegal move is a
        bug here: it fails the workflow task, which Temporal retries once the code is fixed."""
        if target != self.state.phase and target not in LEGAL_TRANSITIONS[self.state.phase]:
            raise RuntimeError(f"illegal move {self.state.phase} -> {target}")
        self.state.phase = target

    # ------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: InstanceWorkflowInput) -> str:
        ref = InstanceRef(self.state.instance_id)
        try:
            spec = await quick(ProvisionActivities.load_spec, ref)
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type == "InstanceRowMissing":
                return "no instance row"  # its creation was rolled back: nothing was created
            raise
        self.spec = spec
        if self.state.phase == S.provisioning:
            await self._provision_and_boot(ref, spec)
        if self.state.phase in (S.ready, S.draining):
            await self._serve(ref, spec)
        if self.state.phase == S.provider_deleted and not self.state.cleaned_up:
            await self._cleanup_after_provider_deleted(ref)
        elif self.state.phase in (S.startup_failed, S.terminating):
            await self._terminate(ref, spec)
        if self.state.cleaned_up:
            await workflow.sleep(timedelta(seconds=spec.archive_after_s))
            await quick(TeardownActivities.archive, ref)
            self._move(S.archived)
        return self.state.termination_reason or "archived"

    async def _provision_and_boot(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        await quick(ProvisionActivities.record_request, ref)
        deadline = workflow.now() + timedelta(seconds=spec.boot_timeout_s)
        try:
            # Transient provider errors and worker crashes are retried until the boot deadline;
            # typed non-retryable errors (no capacity, invalid request) stop at once.
            created = await workflow.execute_activity_method(
                ProvisionActivities.provider_create,
                ref,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(seconds=spec.boot_timeout_s),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            self.state.resource_id = created.resource_id
            self._move(S.booting)
            if self._stop_wanted():
                raise _StopRequested()
            boot = asyncio.ensure_future(self._boot(ref, spec, created.resource_id, deadline))
            await workflow.wait_condition(lambda: boot.done() or self._stop_wanted())
            if not boot.done():
                boot.cancel()
                with _suppress_cancel():
                    await boot
                raise _StopRequested()
            boot.result()
            self._move(S.ready)
        except _StopRequested:
            self._move(S.provider_deleted if self.state.provider_deleted else S.terminating)
        except _BootTimeout:
            await self._fail(
                ref, TerminationReason.boot_timeout, f"not ready within {spec.boot_timeout_s:.0f}s"
            )
        except ActivityError as err:
            await self._fail(ref, TerminationReason.startup_error, failure_message(err))

    async def _boot(
        self, ref: InstanceRef, spec: LifecycleSpec, resource_id: str, deadline: datetime
    ) -> None:
        for step in BOOT_STEPS:
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                raise _BootTimeout()
            step_input = BootStepInput(
                instance_id=ref.instance_id,
                resource_id=resource_id,
                step=step,
                timeout_s=remaining,
                poll_interval_s=spec.poll_interval_s,
            )
            try:
                await workflow.execute_activity_method(
                    BootActivities.boot_step,
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
        await quick(BootActivities.mark_ready, ref)

    async def _fail(self, ref: InstanceRef, reason: TerminationReason, error: str) -> None:
        await quick(ProvisionActivities.fail_startup, FailInput(ref.instance_id, reason, error))
        self.state.termination_reason = self.state.termination_reason or reason
        self._move(S.startup_failed)

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
            health = await quick(HealthActivities.check_health, HealthInput(ref.instance_id))
            if health.gone:
                self.state.provider_deleted = True
                break
            self.state.failed_checks = 0 if health.healthy else self.state.failed_checks + 1
            if self.state.failed_checks >= spec.unhealthy_threshold:
                await self._replace_unhealthy(ref, health.detail)
                return
        if self.state.provider_deleted:
            self._move(S.provider_deleted)
            return
        reason = self.state.termination_reason or TerminationReason.user_request
        drain = DrainInput(ref.instance_id, reason, spec.drain_timeout_s, spec.poll_interval_s)
        if await quick(DrainActivities.begin_drain, drain):
            self._move(S.draining)
            try:
                # Worker crashes are retried, within the drain deadline plus a margin.
                await workflow.execute_activity_method(
                    DrainActivities.wait_drained,
                    drain,
                    start_to_close_timeout=timedelta(seconds=spec.drain_timeout_s + 60),
                    schedule_to_close_timeout=timedelta(seconds=spec.drain_timeout_s + 120),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
            except ActivityError as err:  # a drain that cannot finish still ends in termination
                workflow.logger.warning(
                    "drain of %s did not finish (%s): terminating", ref.instance_id, err.cause
                )
        self._move(S.terminating)

    async def _replace_unhealthy(self, ref: InstanceRef, detail: str) -> None:
        error = f"{self.state.failed_checks} failed health checks: {detail}"
        await quick(
            HealthActivities.record_unhealthy,
            FailInput(ref.instance_id, TerminationReason.unhealthy, error),
        )
        if self.state.replacement_id is None:
            self.state.replacement_id = str(workflow.uuid4())
        await quick(
            HealthActivities.start_replacement,
            ReplacementInput(ref.instance_id, self.state.replacement_id),
        )
        self.state.termination_reason = TerminationReason.unhealthy
        self._move(S.terminating)

    # ------------------------------------------------------------ terminate

    async def _terminate(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        reason = self.state.termination_reason or TerminationReason.error
        if self.state.phase == S.startup_failed:
            self._move(S.terminating)
        state = await quick(
            TeardownActivities.begin_terminate, TerminateInput(ref.instance_id, reason)
        )
        if state == S.provider_deleted:
            self._move(S.provider_deleted)
            await self._cleanup_after_provider_deleted(ref)
            return
        plan = await self._cleanup(TeardownActivities.discover_volumes, ref)
        await self._delete_server(ref, spec)
        await self._delete_volumes(ref, plan.delete)
        await self._cleanup(TeardownActivities.finish_termination, ref)
        self._move(S.terminated)
        self.state.cleaned_up = True

    async def _cleanup(
        self, method: Callable[[Any, ArgT], Awaitable[ResultT]], arg: ArgT
    ) -> ResultT:
        """A cleanup activity: it never gives up, since a machine left at a provider costs money.
        Temporal retries it with backoff (the activity logs each failure and flags the instance
        when it keeps failing); a failure Temporal does not retry is retried here, flagged."""
        max_interval = timedelta(seconds=self.spec.cleanup_max_interval_s)
        failures = 0
        while True:
            try:
                return await workflow.execute_activity_method(
                    method,
                    arg,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=timedelta(seconds=10),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=1),
                        backoff_coefficient=2.0,
                        maximum_interval=max_interval,
                        maximum_attempts=0,
                    ),
                )
            except ActivityError as err:
                failures += 1
                await self._flag_attention(method.__name__, failure_message(err), failures)
                await workflow.sleep(max_interval)

    async def _flag_attention(self, step: str, error: str, attempts: int) -> None:
        attention = AttentionInput(self.state.instance_id, step, error, attempts)
        await quick(TeardownActivities.flag_attention, attention)

    async def _delete_server(self, ref: InstanceRef, spec: LifecycleSpec) -> None:
        """Ask for the deletion, then look until the machine is gone (Temporal retries the look
        with backoff). One that outlives the bound gets the delete again (and, from the second
        time, the instance is flagged as needing attention): never give up."""
        rounds = 0
        while True:
            rounds += 1
            await self._cleanup(TeardownActivities.delete_server, ref)
            try:
                await workflow.execute_activity_method(
                    TeardownActivities.confirm_gone,
                    ref,
                    start_to_close_timeout=timedelta(seconds=60),
                    schedule_to_close_timeout=timedelta(seconds=spec.delete_confirm_timeout_s),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=1),
                        backoff_coefficient=1.5,
                        maximum_interval=timedelta(seconds=15),
                        maximum_attempts=0,
                    ),
                )
                return
            except ActivityError as err:
                timed_out = isinstance(err.cause, TimeoutError_)
                error = (
                    f"machine still there {spec.delete_confirm_timeout_s:.0f}s after its delete"
                    if timed_out
                    else failure_message(err)
                )
                workflow.logger.warning("%s: %s; deleting it again", ref.instance_id, error)
                if rounds >= 2 or not timed_out:
                    await self._flag_attention(
                        TeardownActivities.confirm_gone.__name__, error, rounds
                    )
                if not timed_out:
                    await workflow.sleep(timedelta(seconds=spec.cleanup_max_interval_s))

    async def _delete_volumes(self, ref: InstanceRef, volume_ids: list[str]) -> None:
        for volume_id in volume_ids:
            volume = VolumeRef(ref.instance_id, volume_id)
            await self._cleanup(TeardownActivities.delete_volume, volume)

    async def _cleanup_after_provider_deleted(self, ref: InstanceRef) -> None:
        """The machine is gone; its volumes may not be. Delete those meant to go with it; the
        persistent ones are no longer attached to anything: kept."""
        await quick(HealthActivities.set_routable, RoutingInput(ref.instance_id, False))
        plan = await self._cleanup(TeardownActivities.discover_volumes, ref)
        await self._delete_volumes(ref, plan.delete)
        if workflow.patched("provider-deleted-keeps-volumes"):
            await self._cleanup(TeardownActivities.finish_termination, ref)
        self.state.termination_reason = (
            self.state.termination_reason or TerminationReason.provider_deleted
        )
        self.state.cleaned_up = True


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
