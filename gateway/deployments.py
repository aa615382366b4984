"""The served names this gateway answers for, from PostgreSQL's live deployments.

The routing registry knows only models with a ready instance; this map also covers deployments
whose instances are still starting (their requests wait in the queue) and names their routing
strategy until an instance carries it. Refreshed by a control loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from core.wire import RoutingStrategy
from gateway import sql


@dataclass(slots=True, frozen=True)
class DeploymentEntry:
    id: str
    project_id: str
    routing: RoutingStrategy


class DeploymentMap:
    def __init__(self) -> None:
        self.by_name: dict[str, list[DeploymentEntry]] = {}

    async def reload(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(sql.LIVE_DEPLOYMENTS)
        by_name: dict[str, list[DeploymentEntry]] = {}
        for row in rows:
            by_name.setdefault(row["served_name"], []).append(
                DeploymentEntry(
                    str(row["id"]), str(row["project_id"]), RoutingStrategy(row["routing"])
                )
            )
        self.by_name = by_name

    def __contains__(self, model: str) -> bool:
        return model in self.by_name

    def names(self) -> set[str]:
        return set(self.by_name)

    def first(self, model: str) -> DeploymentEntry | None:
        entries = self.by_name.get(model)
        return entries[0] if entries else None
