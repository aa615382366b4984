"""Prometheus metrics of the gateway, served at /metrics.

With several worker processes (`INVENTIV_GATEWAY_WORKERS` > 1) `python -m gateway` sets
PROMETHEUS_MULTIPROC_DIR before any worker imports this module, and /metrics aggregates all
workers' values.

The per-request counters (requests by code, input and output tokens) are added up in plain ints
and applied to prometheus-client every 0.25 s (`flush`, a gateway loop) and before each render:
its `inc()` takes a lock and, with several workers, writes a shared file, on every call. A scrape
of one worker therefore sees the other workers' last quarter second a scrape later; a single
process is exact.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400)

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "inventiv_gateway_requests",
    "Requests answered, by model and HTTP status code",
    ["model", "code"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "inventiv_gateway_upstream_errors",
    "Engine failures seen by the gateway (connect errors, 5xx, broken streams)",
    ["model", "kind"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "inventiv_gateway_retries",
    "Requests retried on another instance after a failure before the first byte",
    ["model"],
    registry=REGISTRY,
)
EJECTIONS = Counter(
    "inventiv_gateway_ejections",
    "Instances ejected for a while after repeated failures",
    ["model"],
    registry=REGISTRY,
)
TTFT = Histogram(
    "inventiv_gateway_time_to_first_token_seconds",
    "Time from the request to the first streamed chunk",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LATENCY = Histogram(
    "inventiv_gateway_request_duration_seconds",
    "Time from the request to the end of its response",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "inventiv_gateway_overhead_seconds",
    "Time a request spent in the gateway itself until its response started (the "
    "x-inventiv-overhead-ms header): waits for the engine and for capacity left out",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
OUTPUT_TOKENS = Counter(
    "inventiv_gateway_output_tokens",
    "Output tokens generated, from the engine's usage",
    ["model"],
    registry=REGISTRY,
)
INPUT_TOKENS = Counter(
    "inventiv_gateway_input_tokens",
    "Input tokens processed, from the engine's usage",
    ["model"],
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "inventiv_gateway_output_tokens_per_second",
    "Output tokens per second of each streamed request, after its first token",
    ["model"],
    buckets=_RATE_BUCKETS,
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "inventiv_gateway_queue_length",
    "Requests waiting for capacity",
    ["model"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "inventiv_gateway_queue_wait_seconds",
    "Time requests waited in the queue (served or timed out)",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "inventiv_gateway_inflight_requests",
    "Requests in flight per instance",
    ["model", "instance"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter(
    "inventiv_gateway_rate_limit_rejections",
    "Requests refused with 429, by limit",
    ["limit"],
    registry=REGISTRY,
)
# The prefix-aware strategy's guesses: their ratio is the hit rate it expects, to compare with the
# engines' rate(vllm:prefix_cache_hits) / rate(vllm:prefix_cache_queries).
PREFIX_ROUTED_BLOCKS = Counter(
    "inventiv_gateway_prefix_routed_blocks",
    "Prompt blocks routed by the prefix-aware strategy",
    ["model"],
    registry=REGISTRY,
)
PREFIX_EXPECTED_HIT_BLOCKS = Counter(
    "inventiv_gateway_prefix_expected_hit_blocks",
    "Prompt blocks the prefix index expected cached on the instance it chose",
    ["model"],
    registry=REGISTRY,
)
GC_PAUSES = Histogram(
    "inventiv_gateway_gc_pause_seconds",
    "Garbage-collector pauses of the gateway process, by generation: every request in flight "
    "waits for each one",
    ["generation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
    registry=REGISTRY,
)
LOGS_DROPPED = Counter(
    "inventiv_gateway_request_logs_dropped",
    "Request log rows dropped because the buffer was full while the database was down",
    registry=REGISTRY,
)


# (generation, seconds) of the collections not yet applied to GC_PAUSES: the collector's callback
# only appends (observe() takes a lock a collection may have interrupted).
_gc_pauses: list[tuple[int, float]] = []
_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif len(_gc_pauses) < 10_000:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started))


def watch_gc_pauses() -> None:
    """Time the collector's pauses in this process (GC_PAUSES), once per process."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def flush() -> None:
    """Apply every model's counts not yet applied (see the module's docstring)."""
    for model_metrics in _BY_MODEL.values():
        model_metrics.flush()
    global _gc_pauses
    if _gc_pauses:
        pauses, _gc_pauses = _gc_pauses, []
        for generation, seconds in pauses:
            GC_PAUSES.labels(str(generation)).observe(seconds)


async def flush_periodically() -> None:
    """The gateway loop's job (`Supervisor.every`)."""
    flush()


def render() -> tuple[bytes, str]:
    """The exposition text (all workers' values when running several processes)."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class ModelMetrics:
    """The labelled children of one model, resolved once (labels() takes a lock each call)."""

    __slots__ = (
        "_codes",
        "_input_tokens",
        "_output_tokens",
        "_requests",
        "input_tokens",
        "latency",
        "model",
        "output_tokens",
        "overhead",
        "tokens_per_second",
        "ttft",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.latency = LATENCY.labels(model)
        self.overhead = OVERHEAD.labels(model)
        self.ttft = TTFT.labels(model)
        self.tokens_per_second = TOKENS_PER_SECOND.labels(model)
        self.input_tokens = INPUT_TOKENS.labels(model)
        self.output_tokens = OUTPUT_TOKENS.labels(model)
        self._codes: dict[int, Any] = {}
        # Not yet applied to the counters above (`flush`).
        self._requests: dict[int, int] = {}
        self._input_tokens = 0
        self._output_tokens = 0

    def declare(self) -> None:
        """Create the 200 count too (__init__ made the others); other codes come with use."""
        if 200 not in self._codes:
            self._codes[200] = REQUESTS.labels(self.model, "200")

    def request(self, status: int, input_tokens: int, output_tokens: int) -> None:
        """Count one answered request and its tokens (applied by the next `flush`)."""
        requests = self._requests
        requests[status] = requests.get(status, 0) + 1
        self._input_tokens += input_tokens
        self._output_tokens += output_tokens

    def flush(self) -> None:
        if self._requests:
            requests, self._requests = self._requests, {}
            for status, count in requests.items():
                counter = self._codes.get(status)
                if counter is None:
                    counter = self._codes[status] = REQUESTS.labels(self.model, str(status))
                counter.inc(count)
        if self._input_tokens:
            self.input_tokens.inc(self._input_tokens)
            self._input_tokens = 0
        if self._output_tokens:
            self.output_tokens.inc(self._output_tokens)
            self._output_tokens = 0


_BY_MODEL: dict[str, ModelMetrics] = {}


def for_model(model: str) -> ModelMetrics:
    found = _BY_MODEL.get(model)
    if found is None:
        found = _BY_MODEL[model] = ModelMetrics(model)
    return found


def declare_models(models: Iterable[str]) -> None:
    """Export each served name's series at zero before its first request.

    A series that first appears already counting (its first requests answered between two
    scrapes) loses that increase: Prometheus' rate() starts at the first sample it scraped, so a
    burst that fits in one scrape interval gives a rate of 0 and a TTFT p95 of NaN. Declared when
    the gateway learns of a deployment, the first scrape reads 0 and rate() sees every request.
    """
    for model in models:
        for_model(model).declare()
