"""Reads the engine's Prometheus `/metrics` (vLLM names) into the figures the platform uses."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# vLLM renamed its KV-cache gauge in v0.7 (V1 engine); both names are read.
KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
TTFT_SUM = "vllm:time_to_first_token_seconds_sum"
TTFT_COUNT = "vllm:time_to_first_token_seconds_count"
# The simulator's modelled busy time (real vLLM has no such figure).
SIM_BUSY = "inventiv_sim_busy_seconds_total"


@dataclass
class EngineStats:
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    ttft_seconds_sum: float | None = None
    ttft_seconds_count: float | None = None
    busy_seconds_total: float | None = None  # the simulator's only

    @property
    def in_flight(self) -> float | None:
        if self.requests_running is None and self.requests_waiting is None:
            return None
        return (self.requests_running or 0) + (self.requests_waiting or 0)


def parse_engine_metrics(text: str) -> EngineStats:
    """Sums each figure over its label sets (one per engine core in vLLM V1 with DP);
    the KV usage is the highest of them, since one full engine already makes requests wait."""
    totals: dict[str, float] = {}
    kv: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in KV_USAGE_NAMES:
                kv = sample.value if kv is None else max(kv, sample.value)
            elif sample.name in (
                RUNNING,
                WAITING,
                PROMPT_TOKENS,
                GENERATION_TOKENS,
                TTFT_SUM,
                TTFT_COUNT,
                SIM_BUSY,
            ):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return EngineStats(
        requests_running=totals.get(RUNNING),
        requests_waiting=totals.get(WAITING),
        kv_cache_usage=kv,
        prompt_tokens_total=totals.get(PROMPT_TOKENS),
        generation_tokens_total=totals.get(GENERATION_TOKENS),
        ttft_seconds_sum=totals.get(TTFT_SUM),
        ttft_seconds_count=totals.get(TTFT_COUNT),
        busy_seconds_total=totals.get(SIM_BUSY),
    )
