"""New instance rows: one definition for the API, replacements and the autoscaler."""

from __future__ import annotations

import uuid

from core.models import Deployment, Instance


def workflow_id_for(instance_id: uuid.UUID) -> str:
    return f"instance-{instance_id}"


def new_instance(deployment: Deployment, instance_id: uuid.UUID) -> Instance:
    """The row of a new instance of the deployment, in `provisioning`."""
    return Instance(
        id=instance_id,
        deployment_id=deployment.id,
        project_id=deployment.project_id,
        provider_id=deployment.provider_id,
        instance_type_id=deployment.instance_type_id,
        workflow_id=workflow_id_for(instance_id),
    )
