"""The served names this gateway answers for, per project, from PostgreSQL's live deployments.

A served name is unique within its project (a partial unique index on deployments), never across
projects: every lookup takes the key's project, so another project's name answers exactly like
an unknown one. The routing registry knows only deployments with a ready instance; this map also
covers deployments whose instances are still starting (their requests wait in the queue) and
names their routing strategy until an instance carries it. Refreshed by a control loop.
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
    served_name: str
    routing: RoutingStrategy


class DeploymentMap:
    def __init__(self) -> None:
        self.by_project: dict[str, dict[str, DeploymentEntry]] = {}

    async def reload(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(sql.LIVE_DEPLOYMENTS)
        by_project: dict[str, dict[str, DeploymentEntry]] = {}
        for row in rows:
            entry = DeploymentEntry(
                str(row["id"]),
                str(row["project_id"]),
                row["served_name"],
                RoutingStrategy(row["routing"]),
            )
            by_project.setdefault(entry.project_id, {})[entry.served_name] = entry
        self.by_project = by_project

    def get(self, project_id: str, model: str) -> DeploymentEntry | None:
        names = self.by_project.get(project_id)
        return names.get(model) if names is not None else None

    def names(self, project_id: str) -> set[str]:
        return set(self.by_project.get(project_id, ()))

    def entries(self) -> list[DeploymentEntry]:
        return [entry for names in self.by_project.values() for entry in names.values()]
