"""Prefix-aware routing: send a request where its prompt's beginning is probably cached.

vLLM keeps the KV blocks of earlier prompts (16 tokens a block, chained hashes) and skips the
prefill of a new prompt's leading cached blocks, so a request that lands where its prefix already
is starts sooner. The gateway cannot see the engines' caches; it keeps an approximate index of
what it sent where. The prompt's text is cut into blocks of `block_chars` characters (about one
KV block: 16 tokens of ~4 characters), each block hashed together with the hash before it, so
one hash names the whole prefix up to the end of its block. Each instance keeps the hashes it was
sent, least recently used first, bounded like the engine's cache; an instance that leaves or is
ejected (its engine probably restarted) is forgotten (`forget`).

The choice (`PrefixAware.pick`): among the instances not overloaded (bounded imbalance: load
within `load_factor` times their fair share, or at most `load_slack` requests above the least
loaded's, since a few requests apart is the arrivals' noise and a cached prefix saves its whole
prefill), the one holding the longest prefix of the prompt, the less loaded on a tie; when no instance within the bound holds at least `min_match` of the prompt's
blocks, the least loaded (which then caches it). Counters of the blocks routed and of those the
index expected cached on the chosen instance let the guess be checked against the engines' own
`vllm:prefix_cache_hits` / `vllm:prefix_cache_queries`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.routing.registry import Backend

if TYPE_CHECKING:  # strategies.py builds this strategy: no import back at run time
    from gateway.routing.strategies import RoutedRequest, Strategy


def _content_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def prompt_block_hashes(payload: dict[str, Any], block_chars: int) -> list[int]:
    """One hash per full block of the prompt, each chained to the one before.

    Chat messages are rendered with role separators (the engine's chat template differs, but
    only consistency between requests matters here); a completions prompt of token ids is cut
    into blocks of `block_chars // 4` ids. Python's `hash` is enough: the index is per process.
    """
    messages = payload.get("messages")
    units: str | list[Any]
    if isinstance(messages, list):
        units = "".join(
            f"\x1e{m.get('role', '')}\x1f{_content_text(m.get('content'))}"
            for m in messages
            if isinstance(m, dict)
        )
        size = block_chars
    else:
        prompt = payload.get("prompt")
        if isinstance(prompt, str):
            units, size = prompt, block_chars
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            units, size = prompt, max(1, block_chars // 4)
        else:
            return []  # a batch of prompts, or nothing routable by prefix
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(units) - size + 1, size):
        block = units[start : start + size]
        previous = hash((previous, block if isinstance(block, str) else tuple(block)))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    """Per instance, the block hashes it was sent, least recently used first, at most
    `blocks_per_instance` of them.

    A prompt's blocks are refreshed last block first, so a block is always at least as recent as
    the blocks after it in its chain: eviction takes prefixes' tails first (as vLLM frees a
    request's blocks in reverse), what an instance holds of a chain is always a leading run, and
    `matched` finds its length by bisection.
    """

    def __init__(self, blocks_per_instance: int) -> None:
        self.blocks_per_instance = blocks_per_instance
        self._held: dict[str, OrderedDict[int, None]] = {}

    def matched(self, instance_id: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` the instance probably holds."""
        held = self._held.get(instance_id)
        if not held:
            return 0
        low, high = 0, len(hashes)  # invariant: the first `low` blocks are held
        while low < high:
            middle = (low + high + 1) // 2
            if hashes[middle - 1] in held:
                low = middle
            else:
                high = middle - 1
        return low

    def record(self, instance_id: str, hashes: Sequence[int]) -> None:
        """The instance is prefilling these blocks: they become its most recently used."""
        held = self._held.get(instance_id)
        if held is None:
            held = self._held[instance_id] = OrderedDict()
        for block in reversed(hashes):
            held[block] = None
            held.move_to_end(block)
        while len(held) > self.blocks_per_instance:
            held.popitem(last=False)

    def forget(self, instance_id: str) -> None:
        self._held.pop(instance_id, None)

    def blocks(self, instance_id: str) -> int:
        return len(self._held.get(instance_id, ()))

    def instances(self) -> set[str]:
        return set(self._held)


# Called with the chosen backend, the prompt's blocks and those expected cached there.
RoutedObserver = Callable[[Backend, int, int], None]


class PrefixAware:
    """The instance most likely to hold the prompt's prefix, within a bound on imbalance."""

    def __init__(
        self,
        index: PrefixIndex,
        block_chars: int,
        min_match: float,
        load_factor: float,
        load_slack: int,
        load_stale_s: float,
        fallback: Strategy,
        on_routed: RoutedObserver | None = None,
    ) -> None:
        self.index = index
        self.block_chars = block_chars
        self.min_match = min_match
        self.load_factor = load_factor
        self.load_slack = load_slack
        self.load_stale_s = load_stale_s
        self.fallback = fallback
        self.on_routed = on_routed

    def pick(self, candidates: Sequence[Backend], request: RoutedRequest) -> Backend:
        hashes = prompt_block_hashes(request.payload, self.block_chars)
        if not hashes:  # shorter than a block: nothing worth reusing
            return self.fallback.pick(candidates, request)
        chosen, matched = self._best_cached(candidates, hashes)
        if chosen is None or matched < self.min_match * len(hashes):
            chosen = self.fallback.pick(candidates, request)
            matched = self.index.matched(chosen.instance_id, hashes)
        self.index.record(chosen.instance_id, hashes)
        if self.on_routed is not None:
            self.on_routed(chosen, len(hashes), matched)
        return chosen

    def _best_cached(
        self, candidates: Sequence[Backend], hashes: list[int]
    ) -> tuple[Backend | None, int]:
        """The longest match among the instances within the load bound (less loaded on a tie)."""
        now = time.time()
        loads = [b.score(now, self.load_stale_s) * max(1, b.info.gpu_count) for b in candidates]
        total_load = sum(loads) + 1.0  # this request included
        total_gpus = sum(max(1, b.info.gpu_count) for b in candidates)
        least = min(loads)
        best: Backend | None = None
        best_matched = 0
        best_load = math.inf
        for backend, load in zip(candidates, loads, strict=True):
            fair = total_load * max(1, backend.info.gpu_count) / total_gpus
            if load + 1.0 > math.ceil(self.load_factor * fair) and load - least >= self.load_slack:
                continue  # would be overloaded: the bounded-imbalance rule
            matched = self.index.matched(backend.instance_id, hashes)
            if matched > best_matched or (matched == best_matched and load < best_load):
                best, best_matched, best_load = backend, matched, load
        return best, best_matched

    def forget(self, instance_id: str) -> None:
        self.index.forget(instance_id)
