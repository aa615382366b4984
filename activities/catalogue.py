"""Catalogue activity: a provider kind's instance types and prices, read in the worker.

The API must not load cloud SDKs, so its `instance-types/sync` runs this through a short workflow
(workflows/catalogue.py): the kind's adapter reads the provider's own catalogue where it has one
(`live_catalogue`: Scaleway's product catalogue, AWS's Price List Query API), each offer saying
where its price comes from; a kind whose adapter is off in this worker gets the registry's static
table, with the reason.
"""

from __future__ import annotations

import logging

from temporalio import activity

from activities.contracts import CatalogueInput, CatalogueResult
from activities.providers.base import Compute
from activities.providers.registry import provider_spec

log = logging.getLogger(__name__)


class CatalogueActivities:
    def __init__(self, providers: dict[str, Compute]) -> None:
        self.providers = providers

    @activity.defn
    async def read_catalogue(self, inp: CatalogueInput) -> CatalogueResult:
        spec = provider_spec(inp.kind)  # an unknown kind: InvalidRequestError, not retried
        adapter = self.providers.get(inp.kind)
        if adapter is None:
            log.info("catalogue of %s: its provider is off in this worker, static table", inp.kind)
            return CatalogueResult(offers=spec.offers())
        return CatalogueResult(offers=await adapter.live_catalogue())
