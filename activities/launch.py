"""Create an instance row and start its InstanceWorkflow (used by the API and by replacements)."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.instances import new_instance, workflow_id_for
from core.models import Deployment, Instance
from workflows.autoscaler import AutoscalerWorkflow, autoscaler_workflow_id
from workflows.instance import InstanceWorkflow
from workflows.types import AutoscaleInput, InstanceWorkflowInput


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


async def create_instance(
    session: AsyncSession, client: Client, task_queue: str, *, deployment: Deployment
) -> Instance:
    """A new instance of the deployment in `provisioning`, its workflow started."""
    instance_id = uuid.uuid4()
    instance = new_instance(deployment, instance_id)
    session.add(instance)
    await session.commit()
    await session.refresh(instance)
    await start_instance_workflow(client, task_queue, instance_id)
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
