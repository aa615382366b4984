"""The simulated engine: continuous batching with vLLM's limits and a timing model.

One loop runs engine steps, as vLLM's scheduler does. Each step admits waiting requests (FIFO)
while fewer than `max_num_seqs` run and their KV blocks fit in the budget, spends at most
`max_num_batched_tokens` on one decode token per running sequence plus chunks of pending
prefills, then sleeps for the step's modelled duration and hands out the tokens produced.
A request reserves the KV blocks of its whole sequence (prompt + max tokens) when admitted, so
it never needs preempting; vLLM allocates blocks lazily and preempts instead, which shows the
same saturation from outside.

Prefix caching (on by default, as in vLLM V1): the blocks of finished prefills stay cached, keyed
by a hash chained over the full blocks of the prompt, and evicted least recently used beyond the
KV budget; a new prompt skips the prefill of its leading cached blocks (all but its last token).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.sim.config import SimConfig
from agent.sim.tokenizer import next_token

# vLLM's histogram buckets for these metrics.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


# vLLM labels every engine metric with its engine core's index (one core here) and the model.
_LABELS = ("engine", "model_name")
# vLLM creates these finished_reason series at start, at 0.
_FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class EngineMetrics:
    """The engine's Prometheus metrics, with vLLM 0.32's names and labels."""

    def __init__(self, config: SimConfig) -> None:
        self.registry = r = CollectorRegistry()
        values = ("0", config.served_names[0])
        kv_name = (
            "vllm:gpu_cache_usage_perc" if config.legacy_kv_metric else "vllm:kv_cache_usage_perc"
        )

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=r).labels(*values)  # type: ignore[no-any-return]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, registry=r).labels(*values)  # type: ignore[no-any-return]

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, _LABELS, buckets=buckets, registry=r).labels(*values)  # type: ignore[no-any-return]

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled")
        self.kv_usage = gauge(kv_name, "KV-cache usage, 1 means 100 percent")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens processed")
        self._success = Counter(
            "vllm:request_success", "Finished requests", [*_LABELS, "finished_reason"], registry=r
        )
        self._values = values
        for reason in _FINISHED_REASONS:
            self._success.labels(*values, reason)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token", _TTFT_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency", _LATENCY_BUCKETS
        )
        # vLLM 0.32's name; vllm:time_per_output_token_seconds is gone
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens", _ITL_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time spent waiting before being scheduled",
            _LATENCY_BUCKETS,
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix-cache lookups, in prompt tokens"
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix-cache hits, in prompt tokens")
        # Not vLLM's: the time spent running steps, the simulated GPU's busy share, which the
        # agent reports as the machine's GPU utilisation where there is no real GPU.
        self.busy = counter("inventiv_sim_busy_seconds", "Modelled GPU busy time (steps run)")

    def finished(self, reason: str) -> None:
        self._success.labels(*self._values, reason).inc()


def block_hashes(tokens: Sequence[str | int], block_size: int) -> list[int]:
    """One hash per full block, each chained to the previous one (vLLM's prefix-cache keys)."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        previous = hash((previous, tuple(tokens[start : start + block_size])))
        hashes.append(previous)
    return hashes


class PrefixCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: list[int]) -> int:
        """How many leading blocks are cached (and now recently used)."""
        matched = 0
        for block in hashes:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            matched += 1
        return matched

    def insert(self, hashes: list[int]) -> None:
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


@dataclass(eq=False)
class SimRequest:
    prompt_tokens: int
    max_tokens: int
    rng: random.Random
    prompt_blocks: list[int] = field(default_factory=list)  # prefix-cache keys
    cached_tokens: int = 0
    arrival: float = field(default_factory=time.monotonic)
    # tokens as produced; None marks the end of the sequence
    output: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    prefilled: int = 0
    generated: int = 0
    kv_blocks: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancelled: bool = False
    finish_reason: str = "length"
    abort_after: int | None = None  # fault injection: the stream breaks off after this many


class Engine:
    def __init__(self, config: SimConfig, metrics: EngineMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.kv_total_blocks = max(1, config.kv_cache_tokens // config.block_size)
        self.kv_used_blocks = 0
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.prefix_cache = (
            PrefixCache(self.kv_total_blocks) if config.enable_prefix_caching else None
        )

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.config.block_size)

    def fits_at_all(self, prompt_tokens: int, max_tokens: int) -> bool:
        return self.blocks_for(prompt_tokens + max_tokens) <= self.kv_total_blocks

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, request: SimRequest) -> None:
        self.waiting.append(request)
        self._publish()
        self._wakeup.set()

    def cancel(self, request: SimRequest) -> None:
        """The client went away: free its slot at the next step."""
        request.cancelled = True
        if request in self.waiting:
            self.waiting.remove(request)
            self._publish()

    def _publish(self) -> None:
        self.metrics.running.set(len(self.running))
        self.metrics.waiting.set(len(self.waiting))
        self.metrics.kv_usage.set(self.kv_used_blocks / self.kv_total_blocks)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            head = self.waiting[0]
            blocks = self.blocks_for(head.prompt_tokens + head.max_tokens)
            if self.kv_used_blocks + blocks > self.kv_total_blocks:
                break  # FIFO: the head waits for KV space, as vLLM's scheduler does
            self.waiting.popleft()
            self.metrics.prompt_tokens.inc(head.prompt_tokens)
            if self.prefix_cache is not None:
                cached_blocks = self.prefix_cache.match(head.prompt_blocks)
                # the last prompt token is always computed: it yields the first output token
                head.cached_tokens = min(
                    cached_blocks * self.config.block_size, head.prompt_tokens - 1
                )
                head.prefilled = head.cached_tokens
                self.metrics.prefix_queries.inc(head.prompt_tokens)
                self.metrics.prefix_hits.inc(head.cached_tokens)
            head.kv_blocks = blocks
            head.scheduled_at = time.monotonic()
            self.metrics.queue_time.observe(head.scheduled_at - head.arrival)
            self.kv_used_blocks += blocks
            self.running.append(head)

    def _release(self, request: SimRequest) -> None:
        self.running.remove(request)
        self.kv_used_blocks -= request.kv_blocks
        if not request.cancelled:
            request.output.put_nowait(None)
            self.metrics.finished(request.finish_reason)
            self.metrics.e2e.observe(time.monotonic() - request.arrival)

    async def _run(self) -> None:
        while True:
            for request in [r for r in self.running if r.cancelled]:
                self._release(request)
            self._admit()
            self._publish()
            if not self.running:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            budget = self.config.max_num_batched_tokens
            decoding = [r for r in self.running if r.prefilled >= r.prompt_tokens]
            budget -= len(decoding)
            chunks: list[tuple[SimRequest, int]] = []
            for request in self.running:
                pending = request.prompt_tokens - request.prefilled
                if pending > 0 and budget > 0:
                    chunk = min(pending, budget)
                    chunks.append((request, chunk))
                    budget -= chunk
            prefill_tokens = sum(chunk for _, chunk in chunks)
            step = self.config.step_time(len(decoding), prefill_tokens)
            await asyncio.sleep(step)
            self.metrics.busy.inc(step)
            now = time.monotonic()
            producing = list(decoding)
            for request, chunk in chunks:
                request.prefilled += chunk
                if request.prefilled >= request.prompt_tokens:
                    producing.append(request)  # the step that ends a prefill samples a token
                    if self.prefix_cache is not None:
                        self.prefix_cache.insert(request.prompt_blocks)
            for request in producing:
                if request.cancelled:
                    continue
                request.output.put_nowait(next_token(request.rng, request.generated))
                request.generated += 1
                self.metrics.generation_tokens.inc()
                if request.first_token_at is None:
                    request.first_token_at = now
                    self.metrics.ttft.observe(now - request.arrival)
                elif request.last_token_at is not None:
                    self.metrics.itl.observe(now - request.last_token_at)
                request.last_token_at = now
                if request.generated >= request.max_tokens:
                    self._release(request)
