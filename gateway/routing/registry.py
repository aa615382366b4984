"""The registry: ready instances as this gateway replica sees them, indexed by deployment.

A served name means something only within its project: `deployment_of(project, name)` is how a
request finds its deployment, so a key never reaches another project's instances.

Fed by the control loops (ROUTING_REGISTRY in Redis, its change channel, the engines' load
reports); read by the router on every request. Synchronous and in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.wire import RoutableInstance


@dataclass(slots=True, eq=False)
class Backend:
    """A ready instance as the gateway sees it: exact local in-flight count, reported engine load."""

    info: RoutableInstance
    capacity: int  # local in-flight requests at which the instance counts as saturated
    engine_auth: bytes | None = None  # the instance's engine API key, as a header value
    inflight: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0  # monotonic time
    # Engine load from heartbeats (vLLM's num_requests_running / num_requests_waiting /
    # kv_cache_usage_perc) and the epoch time it was measured.
    reported_at: float = 0.0
    reported_running: float = 0.0
    reported_waiting: float = 0.0
    reported_kv_usage: float = 0.0
    routable: bool = True  # False once removed from the registry (in-flight requests finish)

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    def score(self, now: float, stale_s: float) -> float:
        """Expected load per GPU; lower is better.

        Local in-flight counts are exact for this replica; the engine's own counts also include
        other replicas' requests, so the larger of the two estimates the running load. Requests
        waiting in the engine count twice (the engine is already saturated), and a full KV cache
        inflates the score (the engine would preempt)."""
        load = float(self.inflight)
        kv = 0.0
        if now - self.reported_at <= stale_s:
            load = max(load, self.reported_running + self.reported_waiting)
            load += self.reported_waiting
            kv = self.reported_kv_usage
        return load / max(1, self.info.gpu_count) * (1.0 + kv)


class Registry:
    def __init__(
        self,
        max_inflight_per_gpu: int,
        on_added: Callable[[str], None],
        on_removed: Callable[[Backend], None],
        engine_key: Callable[[str], str] | None = None,
    ) -> None:
        self.max_inflight_per_gpu = max_inflight_per_gpu
        self.engine_key = engine_key  # instance id -> its engine API key (derived, not stored)
        self.on_added = on_added  # a model gained capacity (waiting requests may go)
        self.on_removed = on_removed
        self.backends: dict[str, Backend] = {}
        self.by_deployment: dict[str, list[Backend]] = {}
        # (project id, served name) -> deployment id, for the deployments with a ready instance.
        self.named: dict[tuple[str, str], str] = {}

    def put(self, info: RoutableInstance) -> None:
        current = self.backends.get(info.instance_id)
        capacity = self.max_inflight_per_gpu * max(1, info.gpu_count)
        if current is not None:
            if current.info == info:
                return
            # Same instance, new description: update in place so in-flight counts stay exact.
            reindex = (current.info.deployment_id, current.info.project_id, current.info.model) != (
                info.deployment_id,
                info.project_id,
                info.model,
            )
            if reindex:
                self._unindex(current)
            current.info = info
            current.capacity = capacity
            if reindex:
                self._index(current)
        else:
            auth = (
                None
                if self.engine_key is None
                else b"Bearer " + self.engine_key(info.instance_id).encode()
            )
            backend = Backend(info=info, capacity=capacity, engine_auth=auth)
            self.backends[info.instance_id] = backend
            self._index(backend)
        self.on_added(info.deployment_id)

    def remove(self, instance_id: str) -> None:
        backend = self.backends.pop(instance_id, None)
        if backend is None:
            return
        backend.routable = False
        self._unindex(backend)
        self.on_removed(backend)

    def replace_all(self, infos: dict[str, RoutableInstance]) -> None:
        for instance_id in [i for i in self.backends if i not in infos]:
            self.remove(instance_id)
        for info in infos.values():
            self.put(info)

    def _index(self, backend: Backend) -> None:
        info = backend.info
        self.by_deployment.setdefault(info.deployment_id, []).append(backend)
        self.named[(info.project_id, info.model)] = info.deployment_id

    def _unindex(self, backend: Backend) -> None:
        info = backend.info
        members = self.by_deployment.get(info.deployment_id)
        if members is None:
            return
        try:
            members.remove(backend)
        except ValueError:
            return
        if members:
            return
        del self.by_deployment[info.deployment_id]
        name = (info.project_id, info.model)
        if self.named.get(name) == info.deployment_id:
            del self.named[name]
            # Another live deployment of that name (a retired one's successor) takes it over.
            for deployment_id, others in self.by_deployment.items():
                if (others[0].info.project_id, others[0].info.model) == name:
                    self.named[name] = deployment_id
                    break

    def update_load(self, instance_id: str, report: dict[str, float]) -> None:
        backend = self.backends.get(instance_id)
        if backend is None:
            return
        try:
            backend.reported_at = float(report.get("ts", 0.0))
            backend.reported_running = float(report.get("requests_running") or 0.0)
            backend.reported_waiting = float(report.get("requests_waiting") or 0.0)
            backend.reported_kv_usage = min(1.0, float(report.get("kv_cache_usage") or 0.0))
        except (TypeError, ValueError):
            backend.reported_at = 0.0

    def deployment_of(self, project_id: str, model: str) -> str | None:
        return self.named.get((project_id, model))

    def models(self, project_id: str) -> set[str]:
        """The served names of a project's deployments with a ready instance."""
        return {name for project, name in self.named if project == project_id}

    def serves(self, engine_url: str) -> bool:
        return any(b.info.engine_url == engine_url for b in self.backends.values())

    def inflight_by_deployment(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for backend in self.backends.values():
            deployment = backend.info.deployment_id
            totals[deployment] = totals.get(deployment, 0) + backend.inflight
        return totals
