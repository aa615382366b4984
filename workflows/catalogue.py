"""CatalogueWorkflow: read one provider kind's catalogue in the worker, for the API's sync.

Short-lived: one activity, its result returned to the API, which waits a bounded time
(workflows/client.py `read_catalogue`). No I/O here.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.catalogue import CatalogueActivities
    from activities.contracts import CatalogueInput, CatalogueResult


def catalogue_workflow_id(kind: str, request_id: str) -> str:
    return f"catalogue-{kind}-{request_id}"


@workflow.defn
class CatalogueWorkflow:
    @workflow.run
    async def run(self, inp: CatalogueInput) -> CatalogueResult:
        # The adapter falls back to its static table by itself when the provider's API cannot
        # be read, so a failure here is the worker's, and one retry is enough.
        return await workflow.execute_activity_method(
            CatalogueActivities.read_catalogue,
            inp,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(
                maximum_attempts=2, non_retryable_error_types=["InvalidRequestError"]
            ),
        )
