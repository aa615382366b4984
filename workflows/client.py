"""The client side of the workflows: start them and send them commands.

Used by the API, the dev runner and the worker (which hands these to the activities that start or
command workflows, so activities never import workflows). Signals and updates go by method
reference (`InstanceWorkflow.drain`), never by name: a renamed handler fails the type check
instead of being buffered, unknown, by Temporal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from activities.contracts import CatalogueInput, CatalogueResult, ReconcileInput
from core.instances import new_instance, workflow_id_for
from core.models import Deployment, Instance, TerminationReason
from core.quotas import check_and_reserve
from core.settings import Settings
from workflows.autoscaler import AutoscaleInput, AutoscalerWorkflow, autoscaler_workflow_id
from workflows.catalogue import CatalogueWorkflow, catalogue_workflow_id
from workflows.instance import InstanceWorkflow, InstanceWorkflowInput
from workflows.reconciler import ReconcilerWorkflow, reconciler_workflow_id

# How long a command waits for the workflow's answer (a worker must pick the update up).
COMMAND_TIMEOUT = timedelta(seconds=15)
# How long the API's catalogue sync waits for a worker to read the provider's catalogue.
CATALOGUE_TIMEOUT = timedelta(seconds=30)
# Temporal's list of recent pollers is the task queue's root partition's: a running worker whose
# polls sit on other partitions can be missing from it. So "no poller" is checked against the
# truth: the catalogue workflow is started anyway and only when no worker has begun it within this
# grace is answered with "no worker".
NO_POLLER_GRACE = timedelta(seconds=3)


class CommandError(Exception):
    """A command to an instance's workflow was not carried out; the message says why."""


class CommandRefusedError(CommandError):
    """The workflow refused the command (its validator), e.g. draining an instance still booting."""


class WorkflowNotRunningError(CommandError):
    """No running workflow to take the command: it ended, or never started."""


class OrchestratorUnavailableError(CommandError):
    """Temporal or the workers did not answer in time."""


# ---------------------------------------------------------------- starting


async def start_instance_workflow(client: Client, task_queue: str, instance_id: uuid.UUID) -> None:
    """Start the instance's workflow; a second start of the same instance is a no-op."""
    try:
        await client.start_workflow(
            InstanceWorkflow.run,
            InstanceWorkflowInput(str(instance_id)),
            id=workflow_id_for(instance_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass


async def resume_instance_workflow(client: Client, task_queue: str, instance_id: uuid.UUID) -> bool:
    """Start the workflow of an instance row left in provisioning without a running one (the
    reconciler): a running one is kept, one that ended before its row was committed is started
    again. True when a workflow was started."""
    workflow_id = workflow_id_for(instance_id)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            return False
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    try:
        await client.start_workflow(
            InstanceWorkflow.run,
            InstanceWorkflowInput(str(instance_id)),
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False  # started meanwhile by its creator
    return True


async def create_instance(
    session: AsyncSession, client: Client, task_queue: str, *, deployment: Deployment
) -> Instance:
    """A new instance of the deployment in `provisioning`, its workflow started.

    The workflow is started first (its id is derived from the instance's), the row committed
    after: when Temporal is unreachable nothing is committed, so no row waits for a workflow
    that never comes (nor counts against quotas). The workflow waits for its row a while, and
    ends without creating anything when the commit never came."""
    instance_id = uuid.uuid4()
    await check_and_reserve(session, deployment)  # raises QuotaExceeded: nothing is created
    instance = new_instance(deployment, instance_id)
    session.add(instance)
    await session.flush()  # a constraint that fails must fail before the workflow starts
    await start_instance_workflow(client, task_queue, instance_id)
    await session.commit()
    await session.refresh(instance)
    return instance


async def ensure_autoscaler(
    client: Client, task_queue: str, deployment_id: uuid.UUID, interval_s: float
) -> None:
    """Start the deployment's autoscaler unless it runs already (it ends when turned off)."""
    await client.start_workflow(
        AutoscalerWorkflow.run,
        AutoscaleInput(str(deployment_id), interval_s=interval_s),
        id=autoscaler_workflow_id(str(deployment_id)),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def wake_autoscaler(client: Client, deployment_id: str) -> bool:
    """Ask the deployment's autoscaler for a round now; False when none runs (autoscaling off)."""
    try:
        await client.get_workflow_handle(autoscaler_workflow_id(deployment_id)).signal(
            AutoscalerWorkflow.wake
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def ensure_reconciler(client: Client, settings: Settings) -> None:
    """Start the reconciler once per cluster (an already running one is kept)."""
    await client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcileInput(
            settings.reconcile_interval_s,
            settings.orphan_grace_s,
            missing_grace_s=settings.missing_grace_s,
        ),
        id=reconciler_workflow_id(settings.task_queue),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def read_catalogue(
    client: Client, task_queue: str, kind: str, timeout: timedelta | None = None
) -> CatalogueResult:
    """The provider kind's catalogue as a worker reads it (the SDKs are the worker's), waiting
    at most `timeout` (CATALOGUE_TIMEOUT). Raises `OrchestratorUnavailableError` when no worker
    answered in time, after NO_POLLER_GRACE when Temporal lists no poller and none began it;
    the workflow's own execution timeout ends it if none ever picks it up."""
    timeout = timeout or CATALOGUE_TIMEOUT
    polled = await _has_workers(client, task_queue)
    handle = await client.start_workflow(
        CatalogueWorkflow.run,
        CatalogueInput(kind),
        id=catalogue_workflow_id(kind, uuid.uuid4().hex),
        task_queue=task_queue,
        execution_timeout=timeout,
    )
    if not polled and not await _picked_up(handle, min(NO_POLLER_GRACE, timeout / 2)):
        with contextlib.suppress(RPCError):  # it may have ended meanwhile
            await handle.terminate("no worker polls the task queue")
        raise OrchestratorUnavailableError(
            f"no worker is polling task queue {task_queue!r}: start `inventiv worker` to read "
            f"the {kind} catalogue"
        )
    unavailable = (
        f"no worker read the {kind} catalogue within {timeout.total_seconds():g} s (is a worker "
        f"running on task queue {task_queue!r}?)"
    )
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            return await handle.result()
    except TimeoutError as exc:
        raise OrchestratorUnavailableError(unavailable) from exc
    except WorkflowFailureError as exc:
        if isinstance(exc.cause, WorkflowTimeoutError):  # its execution timeout came first
            raise OrchestratorUnavailableError(unavailable) from exc
        raise OrchestratorUnavailableError(
            f"the worker could not read the {kind} catalogue: {exc.cause or exc}"
        ) from exc


_FINISHED_BY_A_WORKER = frozenset(
    {WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED}
)


async def _picked_up(handle: WorkflowHandle[Any, Any], grace: timedelta) -> bool:
    """Whether a worker has begun the workflow (its first task started) or finished it within
    `grace`; one timed out or terminated was not taken."""
    deadline = time.monotonic() + grace.total_seconds()
    while True:
        described = await handle.describe()
        if described.status in _FINISHED_BY_A_WORKER or described.history_length > 2:
            return True  # past WorkflowExecutionStarted and WorkflowTaskScheduled
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)


async def _has_workers(client: Client, task_queue: str) -> bool:
    """Whether a worker polled the task queue lately (Temporal keeps recent pollers): without
    one, a wait for its answer would only run out."""
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(described.pollers)


# ---------------------------------------------------------------- commands


async def drain_instance(
    client: Client, workflow_id: str, reason: TerminationReason = TerminationReason.user_request
) -> None:
    """Drain, then terminate. Raises a `CommandError` when the workflow does not take it."""
    await _command(client, workflow_id, InstanceWorkflow.drain, reason)


async def terminate_instance(
    client: Client, workflow_id: str, reason: TerminationReason = TerminationReason.user_request
) -> None:
    """Terminate (a ready instance is drained first). Raises a `CommandError` when the workflow
    does not take it."""
    await _command(client, workflow_id, InstanceWorkflow.terminate, reason)


async def drain_if_accepted(client: Client, workflow_id: str, reason: TerminationReason) -> bool:
    """Drain; False when the workflow refused or has ended (the autoscaler moves on)."""
    try:
        await drain_instance(client, workflow_id, reason)
    except (CommandRefusedError, WorkflowNotRunningError):
        return False
    return True


async def report_provider_deleted(client: Client, workflow_id: str) -> None:
    """Tell the instance's workflow its machine is gone at the provider."""
    handle = client.get_workflow_handle_for(InstanceWorkflow.run, workflow_id)
    await handle.signal(InstanceWorkflow.provider_deleted)


async def _command(
    client: Client,
    workflow_id: str,
    update: UpdateMethodMultiParam[[InstanceWorkflow, TerminationReason], None],
    reason: TerminationReason,
) -> None:
    handle = client.get_workflow_handle_for(InstanceWorkflow.run, workflow_id)
    unavailable = f"the orchestrator did not answer within {COMMAND_TIMEOUT.total_seconds():.0f}s"
    try:
        await handle.execute_update(update, reason, rpc_timeout=COMMAND_TIMEOUT)
    except WorkflowUpdateFailedError as exc:
        raise CommandRefusedError(str(exc.cause or exc)) from exc
    except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
        raise OrchestratorUnavailableError(unavailable) from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise WorkflowNotRunningError(
                f"the instance's workflow {workflow_id} is not running"
            ) from exc
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE):
            raise OrchestratorUnavailableError(unavailable) from exc
        raise
