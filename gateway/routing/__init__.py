"""Routing in four parts: the registry of ready instances (registry), the choice among them
(strategies, one per `core.wire.RoutingStrategy`), the per-deployment queue (queue) and passive
health (health), put together by the router. Keyed by deployment id."""

from gateway.routing.registry import Backend
from gateway.routing.router import Router
from gateway.routing.strategies import RoutedRequest, Strategy

__all__ = ["Backend", "RoutedRequest", "Router", "Strategy"]
