"""The prefix-aware strategy in memory: its index (matching, LRU bound, forgetting) and its
choices (a prefix's requests stay together, the bounded-imbalance fallback, instances leaving)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.wire import RoutableInstance, RoutingStrategy
from gateway.routing import Router
from gateway.routing.prefix import PrefixAware, PrefixIndex, prompt_block_hashes
from gateway.settings import GatewaySettings

BLOCK = 64


@dataclass
class Request:
    payload: dict[str, Any]
    routing: RoutingStrategy = RoutingStrategy.prefix_aware
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def text(tenant: str, chars: int) -> str:
    """A tenant's document: distinct from the first block on."""
    return (f"{tenant} knowledge base, section " * (chars // 20 + 1))[:chars]


def chat(context: str, question: str) -> Request:
    return Request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": context},
                {"role": "user", "content": question},
            ],
        }
    )


def router_with(count: int, **settings: Any) -> Router:
    router = Router(GatewaySettings(**settings))
    for i in range(count):
        router.registry.put(
            RoutableInstance(
                instance_id=f"i{i}",
                deployment_id="m",  # the same name: routed by deployment or by served name
                project_id="p",
                model="m",
                engine_url=f"http://10.0.0.{i}:8000",
                routing=RoutingStrategy.prefix_aware,
            )
        )
    return router


def prefix_strategy(router: Router) -> PrefixAware:
    strategy = router.strategies[RoutingStrategy.prefix_aware]
    assert isinstance(strategy, PrefixAware)
    return strategy


def test_block_hashes_name_whole_prefixes() -> None:
    shared = text("acme", 10 * BLOCK)
    a = prompt_block_hashes({"prompt": shared + "first question, rather long" * 10}, BLOCK)
    b = prompt_block_hashes({"prompt": shared + "another one entirely, also long" * 10}, BLOCK)
    assert a[:10] == b[:10] and a[10] != b[10]
    # The same block after a different beginning is a different prefix.
    shifted = prompt_block_hashes({"prompt": "x" * BLOCK + shared}, BLOCK)
    assert not set(shifted[1:]) & set(a)
    # Only full blocks; chat messages and token-id prompts are cut too; a batch is not.
    assert prompt_block_hashes({"prompt": "y" * (BLOCK - 1)}, BLOCK) == []
    assert len(prompt_block_hashes(chat(shared, "q?").payload, BLOCK)) == 10
    assert len(prompt_block_hashes({"prompt": list(range(64))}, BLOCK)) == 4
    assert prompt_block_hashes({"prompt": ["one", "two"]}, BLOCK) == []


def test_index_matches_leading_blocks_per_instance() -> None:
    index = PrefixIndex(blocks_per_instance=100)
    hashes = list(range(1, 21))
    index.record("a", hashes[:12])
    assert index.matched("a", hashes) == 12
    assert index.matched("a", hashes[:5]) == 5
    assert index.matched("b", hashes) == 0
    assert index.matched("a", [99, 98, 97]) == 0


def test_index_is_bounded_and_evicts_least_recent_tails_first() -> None:
    index = PrefixIndex(blocks_per_instance=30)
    old, recent, newest = list(range(100, 120)), list(range(200, 210)), list(range(300, 310))
    index.record("a", old)
    index.record("a", recent)
    index.record("a", newest)  # 40 blocks recorded, 30 kept
    assert index.blocks("a") == 30
    assert index.matched("a", newest) == 10 and index.matched("a", recent) == 10
    # The oldest prompt lost its tail, not its beginning: it still matches a leading run.
    assert index.matched("a", old) == 10
    index.record("a", old[:3])  # used again: its head becomes the most recent
    index.record("a", list(range(400, 420)))
    assert index.matched("a", old) == 3
    assert index.matched("a", recent) == 0


def test_a_prefix_stays_on_one_instance_and_tenants_spread() -> None:
    router = router_with(4)
    homes: dict[str, set[str]] = {}
    for round_ in range(3):
        for tenant in ("acme", "globex", "initech", "umbrella", "hooli", "stark"):
            request = chat(text(tenant, 40 * BLOCK), f"question {round_} of {tenant}")
            backend = router.pick("m", request)
            assert backend is not None
            homes.setdefault(tenant, set()).add(backend.instance_id)
            router.release(backend)
    assert all(len(instances) == 1 for instances in homes.values()), homes
    assert len(set().union(*homes.values())) >= 3  # new prefixes went to the least loaded


def test_an_overloaded_home_sends_its_prefix_to_the_least_loaded() -> None:
    router = router_with(3)  # prefix_load_factor 2, prefix_load_slack 16
    context = text("acme", 40 * BLOCK)
    home = router.pick("m", chat(context, "warm the cache"))
    assert home is not None
    # 6 requests on the home, none elsewhere: over twice its fair share, but 6 requests apart
    # is noise next to the prefill its cache saves: the home keeps its prefix.
    home.inflight += 5
    kept = router.pick("m", chat(context, "a few more"))
    assert kept is home
    router.release(kept)
    # 17 on it: over both bounds. The prefix goes to the least loaded.
    home.inflight += 11
    other = router.pick("m", chat(context, "one more question"))
    assert other is not None and other is not home
    assert other.inflight == 1
    # With the relative bound alone (slack 0), 6 against none is already overload.
    strict = router_with(3, prefix_load_slack=0)
    home = strict.pick("m", chat(context, "warm the cache"))
    assert home is not None
    home.inflight += 5
    assert strict.pick("m", chat(context, "one more question")) is not home
    # Within the bound the cached instance wins again, even though it is the busier one.
    home.inflight -= 5
    spilled = [b for b in strict.registry.backends.values() if b is not home and b.inflight]
    spilled[0].inflight += 1
    again = strict.pick("m", chat(context, "and another"))
    assert again is home


def test_little_in_common_goes_to_the_least_loaded() -> None:
    router = router_with(2)
    busy = router.pick("m", chat(text("acme", 10 * BLOCK), "q"))
    assert busy is not None
    # Shares 10 of 40 blocks (under prefix_min_match 0.5): not worth the busier instance.
    request = chat(text("acme", 10 * BLOCK) + text("other", 30 * BLOCK), "q")
    chosen = router.pick("m", request)
    assert chosen is not None and chosen is not busy


async def test_an_instance_that_leaves_or_is_ejected_is_forgotten() -> None:
    router = router_with(3, eject_after_failures=1)
    index = prefix_strategy(router).index
    chosen = {}
    for tenant in ("acme", "globex", "initech"):
        backend = router.pick("m", chat(text(tenant, 20 * BLOCK), "q"))
        assert backend is not None
        chosen[tenant] = backend
        router.release(backend)
    assert index.instances() == {"i0", "i1", "i2"}
    left = chosen["acme"].instance_id
    router.registry.remove(left)
    assert left not in index.instances()
    # Its tenant goes to another instance, which then holds the prefix.
    backend = router.pick("m", chat(text("acme", 20 * BLOCK), "q"))
    assert backend is not None and backend.instance_id != left
    hashes = prompt_block_hashes(chat(text("acme", 20 * BLOCK), "q").payload, BLOCK)
    assert index.matched(backend.instance_id, hashes) == len(hashes)
    # Ejected after a failure (its engine may have restarted): forgotten too.
    assert router.record_failure(backend)
    assert index.matched(backend.instance_id, hashes) == 0
