"""Routing strategies: which of a model's usable instances takes a request.

A strategy sees only instances that can take the request now (not saturated, not ejected; the
router filters) and the request itself; it returns one of them. The router counts the request on
it. A strategy that remembers something per instance drops it in `forget`, which the router calls
when an instance leaves the registry or is ejected. Adding a strategy: a class with `pick` and
`forget`, a member of `core.wire.RoutingStrategy` (the
deployment's `routing` field, which the API and the dashboard offer), and one line in
`build_strategies`; tests/gateway/test_strategies.py checks every member has its strategy.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from core.wire import RoutingStrategy
from gateway import metrics
from gateway.routing.prefix import PrefixAware, PrefixIndex
from gateway.routing.registry import Backend
from gateway.settings import GatewaySettings


class RoutedRequest(Protocol):
    """What a strategy may read of a request (gateway.proxy.ProxyRequest is one)."""

    @property
    def routing(self) -> RoutingStrategy: ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...  # the client's, names lower-case

    @property
    def payload(self) -> dict[str, Any]: ...  # the parsed JSON body


class Strategy(Protocol):
    def pick(self, candidates: Sequence[Backend], request: RoutedRequest) -> Backend:
        """One of `candidates` (never empty)."""
        ...

    def forget(self, instance_id: str) -> None:
        """The instance left or was ejected (its engine may have restarted with an empty
        cache): drop what was kept about it."""
        ...


class LeastLoad:
    """The lowest expected load per GPU (`Backend.score`); ties spread by rotating the scan."""

    def __init__(self, load_stale_s: float) -> None:
        self.load_stale_s = load_stale_s
        self._turn = 0

    def pick(self, candidates: Sequence[Backend], request: RoutedRequest) -> Backend:
        count = len(candidates)
        self._turn = (self._turn + 1) % count
        now = time.time()
        chosen = candidates[self._turn]
        best_score = math.inf
        for offset in range(count):
            backend = candidates[(self._turn + offset) % count]
            score = backend.score(now, self.load_stale_s)
            if score < best_score:
                best_score = score
                chosen = backend
        return chosen

    def forget(self, instance_id: str) -> None:
        """Nothing is kept per instance."""


def _rank(session: str, instance_id: str) -> bytes:
    """Rendezvous-hash weight: the same on every gateway replica (unlike Python's hash())."""
    return hashlib.blake2b(f"{session}\x00{instance_id}".encode(), digest_size=8).digest()


SessionOf = Callable[[RoutedRequest], str | None]


def session_from_header(header: str) -> SessionOf:
    name = header.lower().encode()

    def session_of(request: RoutedRequest) -> str | None:
        for key, value in request.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    return session_of


def session_from_user_field(request: RoutedRequest) -> str | None:
    user = request.payload.get("user")
    return user if isinstance(user, str) and user else None


class StickyBoundedLoad:
    """Consistent hashing with bounded load (rendezvous order): a session's requests go to its
    preferred instance unless that one's load would exceed `load_factor` x its fair share, then
    to the next in the session's order; least load when no instance is within the bound, or the
    request names no session."""

    def __init__(
        self, session_of: SessionOf, load_factor: float, load_stale_s: float, fallback: Strategy
    ) -> None:
        self.session_of = session_of
        self.load_factor = load_factor
        self.load_stale_s = load_stale_s
        self.fallback = fallback

    def pick(self, candidates: Sequence[Backend], request: RoutedRequest) -> Backend:
        session = self.session_of(request) if len(candidates) > 1 else None
        if session is not None:
            now = time.time()
            loads = [b.score(now, self.load_stale_s) * max(1, b.info.gpu_count) for b in candidates]
            total_load = sum(loads) + 1.0
            total_gpus = sum(max(1, b.info.gpu_count) for b in candidates)
            ranked = sorted(
                zip(candidates, loads, strict=True),
                key=lambda pair: _rank(session, pair[0].instance_id),
                reverse=True,
            )
            for backend, load in ranked:
                fair = total_load * max(1, backend.info.gpu_count) / total_gpus
                if load + 1.0 <= math.ceil(self.load_factor * fair):
                    return backend
        return self.fallback.pick(candidates, request)

    def forget(self, instance_id: str) -> None:
        """Nothing is kept per instance: the rendezvous order needs only the ids."""


def build_strategies(config: GatewaySettings) -> dict[RoutingStrategy, Strategy]:
    """Every strategy, built once per gateway process: the one registration point."""
    least_load = LeastLoad(config.load_stale_s)

    def sticky(session_of: SessionOf) -> StickyBoundedLoad:
        return StickyBoundedLoad(
            session_of, config.sticky_load_factor, config.load_stale_s, least_load
        )

    prefix_aware = PrefixAware(
        PrefixIndex(config.prefix_index_blocks),
        config.prefix_block_chars,
        config.prefix_min_match,
        config.prefix_load_factor,
        config.prefix_load_slack,
        config.load_stale_s,
        least_load,
        on_routed=_count_prefix_guess,
    )
    return {
        RoutingStrategy.least_load: least_load,
        RoutingStrategy.sticky_header: sticky(session_from_header(config.session_header)),
        RoutingStrategy.sticky_user: sticky(session_from_user_field),
        RoutingStrategy.prefix_aware: prefix_aware,
    }


def _count_prefix_guess(backend: Backend, blocks: int, expected_cached: int) -> None:
    """What the prefix index expected, to set against the engines' vllm:prefix_cache_hits."""
    metrics.PREFIX_ROUTED_BLOCKS.labels(backend.info.model).inc(blocks)
    metrics.PREFIX_EXPECTED_HIT_BLOCKS.labels(backend.info.model).inc(expected_cached)
