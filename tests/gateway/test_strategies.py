"""The routing seam: every strategy a deployment can name is served, and the router hands each
request's choice to the strategy its deployment names (in memory, no servers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.wire import RoutableInstance, RoutingStrategy
from gateway.routing import Backend, RoutedRequest, Router
from gateway.routing.strategies import build_strategies
from gateway.settings import GatewaySettings


@dataclass
class Request:
    routing: RoutingStrategy
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)


def router_with(count: int) -> Router:
    router = Router(GatewaySettings())
    for i in range(count):
        router.registry.put(
            RoutableInstance(
                instance_id=f"i{i}",
                deployment_id="d",
                project_id="p",
                model="m",
                engine_url=f"http://10.0.0.{i}:8000",
            )
        )
    return router


def test_every_routing_strategy_has_its_class() -> None:
    assert set(build_strategies(GatewaySettings())) == set(RoutingStrategy)


def test_the_deployments_strategy_makes_the_choice() -> None:
    class LastListed:
        def pick(self, candidates: Sequence[Backend], request: RoutedRequest) -> Backend:
            return candidates[-1]

    router = router_with(3)
    router.strategies[RoutingStrategy.least_load] = LastListed()
    chosen = router.pick("d", Request(RoutingStrategy.least_load))
    assert chosen is not None and chosen.instance_id == "i2"
    assert chosen.inflight == 1


def test_sticky_strategies_read_their_session_and_least_load_spreads() -> None:
    router = router_with(4)
    header = Request(RoutingStrategy.sticky_header, headers=[(b"x-session-id", b"alice")])
    user = Request(RoutingStrategy.sticky_user, payload={"user": "alice"})
    homes = set()
    for request in (header, user):
        for _ in range(3):
            backend = router.pick("d", request)
            assert backend is not None
            homes.add(backend.instance_id)
            router.release(backend)
    # Same session, same rendezvous order: one home for both ways of naming it.
    assert len(homes) == 1
    held = [router.pick("d", Request(RoutingStrategy.least_load)) for _ in range(4)]
    assert {b.instance_id for b in held if b is not None} == {"i0", "i1", "i2", "i3"}
