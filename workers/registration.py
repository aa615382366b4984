"""What a worker registers, derived rather than listed: every workflow in one list, and every
`@activity.defn` method of the activity objects it is given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from workflows.autoscaler import AutoscalerWorkflow
from workflows.catalogue import CatalogueWorkflow
from workflows.instance import InstanceWorkflow
from workflows.reconciler import ReconcilerWorkflow

WORKFLOWS: list[type] = [
    InstanceWorkflow,
    ReconcilerWorkflow,
    AutoscalerWorkflow,
    CatalogueWorkflow,
]


def activity_methods(*objects: object) -> list[Callable[..., Any]]:
    """The bound `@activity.defn` methods of each object, in definition order."""
    methods: list[Callable[..., Any]] = []
    for obj in objects:
        for name in vars(type(obj)):
            member = getattr(obj, name)
            if callable(member) and activity._Definition.from_callable(member) is not None:
                methods.append(member)
    return methods
