"""The live autoscaling run's parts that need no stack: the simulator is given the offline
model's instance and serves a burst as the model predicts; the slice and the figures.
(The live run itself takes minutes: `python -m bench.autoscale.live`, see its README.)"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.sim.config import parse_args
from agent.supervisor import engine_flags
from bench.autoscale.live import (
    MODEL,
    Sent,
    counts,
    engine_args,
    instance_model,
    orders,
    send,
    trace_slice,
)
from bench.autoscale.model import Request
from bench.autoscale.policies import Static
from bench.autoscale.replay import Replay, ReplaySettings, load_trace
from core.embedded import free_port, wait_for_port
from tests.bench.test_autoscale_replay import synthetic_trace


def test_the_simulator_is_given_the_models_instance() -> None:
    model = instance_model(2.5)
    config = parse_args([MODEL, *engine_flags(engine_args(model, 15))])
    assert config.prefill_overhead_s == model.prefill_overhead_s == 2.5 * 0.015
    assert config.prefill_per_token_s == model.prefill_per_token_s
    assert config.inter_token_latency_s == model.inter_token_latency_s == 2.5 * 0.008
    assert config.decode_slowdown_per_seq == model.decode_slowdown_per_seq
    assert config.max_num_seqs == model.max_num_seqs
    assert config.max_num_batched_tokens == model.max_num_batched_tokens
    assert config.kv_cache_tokens == model.kv_cache_tokens
    assert not config.enable_prefix_caching  # the model has no prefix cache
    assert config.max_model_len >= 14050 + 1000  # the conversation trace's longest request
    assert config.model_load_delay_s == 15


def test_a_slice_is_the_trace_between_its_minutes_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    synthetic_trace(path)
    whole = load_trace(str(path), compress=2)
    part = trace_slice(str(path), start_min=2, minutes=3, compress=2)
    inside = [r for r in whole if 60 <= r.arrival < 150]
    assert [r.arrival + 60 for r in part] == [r.arrival for r in inside]
    assert part[0].arrival >= 0 and part[-1].arrival < 90


def test_instance_counts_and_orders() -> None:
    # Ordered at 0 and kept; ordered at 2, draining from 4; ordered at 2.5, still coming.
    intervals: list[tuple[float, float | None]] = [(0.0, None), (2.0, 4.0), (2.5, None)]
    assert [n for _, n in counts(intervals, 5)] == [1, 1, 2, 3, 2, 2]
    assert orders([2.0, 2.5, 0.0, 30.0]) == [[0.0, 1], [2.0, 2], [30.0, 1]]


def test_the_simulator_serves_a_burst_as_the_model_predicts() -> None:
    """A few seconds of requests straight to a simulator process (no platform): each one's
    time to first token and end-to-end time against the offline model's for the same
    instance (they once differed by a held token and decode progress counted twice)."""
    rng = random.Random(3)
    requests = sorted(
        (
            Request(rng.uniform(0, 3), rng.randint(50, 2500), rng.randint(10, 120))
            for _ in range(24)
        ),
        key=lambda r: r.arrival,
    )
    model = instance_model(2)
    port = free_port()
    flags = engine_flags(engine_args(model, 0.1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.sim", MODEL, "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)

        async def burst() -> list[Sent]:
            t0 = time.monotonic()
            sent = [Sent(r) for r in requests]
            tasks = []
            for s in sent:
                await asyncio.sleep(max(0.0, t0 + s.req.arrival - time.monotonic()))
                tasks.append(asyncio.create_task(send("127.0.0.1", port, "unused", t0, s)))
            await asyncio.gather(*tasks)
            return sent

        sent = asyncio.run(burst())
    finally:
        proc.terminate()
        proc.wait(10)
    replay = Replay(requests, Static(), ReplaySettings(), model, initial_instances=1)
    replay.run()
    assert all(s.served for s in sent), [(s.status, s.error) for s in sent]
    ttft = [
        (s.first_token - s.sent) - (f.first_token - f.req.arrival)
        for s, f in zip(sent, replay.flights, strict=True)
    ]
    e2e = [
        (s.done - s.sent) / (f.done - f.req.arrival)
        for s, f in zip(sent, replay.flights, strict=True)
    ]
    # Measured here: TTFT about 5 ms later, end to end 1-3 % longer (Python's HTTP and event
    # loop); the bounds leave room for a loaded machine. The held token made TTFT 0.6 s later
    # (median); decode counted twice during prefill steps made the model's p90 2.3x too short.
    e2e.sort()
    assert -0.05 < statistics.median(ttft) < 0.15, ttft
    assert 0.9 < statistics.median(e2e) < 1.2, e2e
    assert e2e[int(0.9 * len(e2e))] < 1.35, e2e
