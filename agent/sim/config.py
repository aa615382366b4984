"""Simulator settings, parsed from `vllm serve`-style command lines.

Defaults model Llama-3.1-8B-Instruct in BF16 on one H100 80GB under vLLM 0.6-0.8, from vLLM's own
benchmarks and logs (figures rounded):
- prefill: ~20k prompt tokens/s at batch 1 -> 50 us per prompt token, plus ~15 ms of scheduling and
  kernel-launch overhead per step that carries prefill work;
- decode: ~8 ms per output token for a single sequence (~120 tokens/s), growing roughly linearly
  with the batch: ~12 ms per token at 64 concurrent sequences -> +0.6% per extra sequence;
- `--max-num-seqs` 256 and `--max-num-batched-tokens` 8192 are vLLM's defaults;
- KV cache: 128 KiB per token for this model; ~50 GB left at `--gpu-memory-utilization 0.9` gives
  ~400k tokens; the default here is a smaller 131072 so saturation shows at dev scale;
- model load: 30-60 s for a real 8B load with CUDA-graph capture; 1.5 s here keeps dev fast.
Every figure is a flag, so a calibration run (bench/sim) can replace them with measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

# Every flag real vLLM's server accepts, captured from its parser (agent/sim/capture_flags.py).
VLLM_FLAGS_FILE = Path(__file__).with_name("vllm_flags.json")
DEFAULT_MAX_MODEL_LEN = 8192


@dataclass
class SimConfig:
    model: str = "demo-llm"
    served_model_names: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    seed: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    block_size: int = 16
    kv_cache_tokens: int = 131072
    prefill_overhead_s: float = 0.015
    prefill_per_token_s: float = 0.00005
    inter_token_latency_s: float = 0.008
    decode_slowdown_per_seq: float = 0.006
    default_max_tokens: int = 64
    model_load_delay_s: float = 1.5
    legacy_kv_metric: bool = False
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False
    # vLLM's --api-key (or VLLM_API_KEY): requests under /v1 must carry one as a Bearer token.
    api_keys: list[str] = field(default_factory=list)
    # fault injection
    fault_error_rates: dict[int, float] = field(default_factory=dict)
    fault_hang_rate: float = 0.0
    fault_stream_abort_rate: float = 0.0
    fault_hang_s: float = 3600.0
    fault_crash_after: int = 0
    fault_slow_start_s: float = 0.0
    ignored_args: list[str] = field(default_factory=list)

    @property
    def served_names(self) -> list[str]:
        return self.served_model_names or [self.model]

    def step_time(self, decoding: int, prefill_tokens: int) -> float:
        """Seconds one engine step takes: a decode pass for the batch plus any prefill chunk."""
        seconds = 0.0
        if decoding:
            seconds += self.inter_token_latency_s * (
                1 + self.decode_slowdown_per_seq * (decoding - 1)
            )
        if prefill_tokens:
            seconds += self.prefill_overhead_s + self.prefill_per_token_s * prefill_tokens
        return seconds


def _error_rates(text: str) -> dict[int, float]:
    """`500:0.05,429:0.02` -> {500: 0.05, 429: 0.02}."""
    rates: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        code, _, rate = item.partition(":")
        try:
            rates[int(code)] = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad error rate {item!r}: expected STATUS:RATE, e.g. 500:0.05"
            ) from None
    if sum(rates.values()) > 1:
        raise argparse.ArgumentTypeError("error rates add up to more than 1")
    return rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.sim",
        description="OpenAI-compatible vLLM simulator. Accepts `vllm serve` flags; "
        "vLLM's flags it does not model are accepted and ignored, others refused as vLLM does.",
    )
    d = SimConfig()
    parser.add_argument("--model", help="model; `vllm serve MODEL` puts it first instead")
    parser.add_argument("--served-model-name", nargs="+", default=[], dest="served_model_names")
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--api-key", nargs="+", default=[], dest="api_keys")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for repeatable runs")
    parser.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="default: the model folder's max_position_embeddings, as vLLM reads it; else "
        f"{DEFAULT_MAX_MODEL_LEN}",
    )
    parser.add_argument("--block-size", type=int, default=d.block_size)
    parser.add_argument(
        "--num-gpu-blocks-override", type=int, default=None, help="KV budget in blocks"
    )
    parser.add_argument(
        "--kv-cache-tokens", type=int, default=d.kv_cache_tokens, help="KV budget in tokens"
    )
    parser.add_argument("--prefill-overhead-s", type=float, default=d.prefill_overhead_s)
    parser.add_argument("--prefill-per-token-s", type=float, default=d.prefill_per_token_s)
    parser.add_argument("--inter-token-latency-s", type=float, default=d.inter_token_latency_s)
    parser.add_argument("--decode-slowdown-per-seq", type=float, default=d.decode_slowdown_per_seq)
    parser.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens)
    parser.add_argument("--model-load-delay-s", type=float, default=d.model_load_delay_s)
    parser.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=d.enable_prefix_caching,
        help="reuse the KV blocks of earlier prompts' prefixes (vLLM V1's default)",
    )
    parser.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens, as vLLM does with this flag",
    )
    parser.add_argument(
        "--legacy-kv-metric",
        action="store_true",
        help="name KV usage vllm:gpu_cache_usage_perc, as vLLM did before v0.7",
    )
    parser.add_argument(
        "--fault-error-rate",
        type=_error_rates,
        default={},
        dest="fault_error_rates",
        help="answer this share of requests with an HTTP error, e.g. 500:0.05,429:0.02",
    )
    parser.add_argument(
        "--fault-hang-rate",
        type=float,
        default=d.fault_hang_rate,
        help="share of requests that wait --fault-hang-s before being served",
    )
    parser.add_argument(
        "--fault-stream-abort-rate",
        type=float,
        default=d.fault_stream_abort_rate,
        help="share of streamed responses whose connection drops half-way",
    )
    parser.add_argument("--fault-hang-s", type=float, default=d.fault_hang_s)
    parser.add_argument(
        "--fault-crash-after",
        type=int,
        default=d.fault_crash_after,
        help="exit abruptly when request N+1 arrives (0: never)",
    )
    parser.add_argument(
        "--fault-slow-start-s",
        type=float,
        default=d.fault_slow_start_s,
        help="extra start-up delay on top of the model load",
    )
    return parser


@cache
def vllm_flags() -> frozenset[str]:
    return frozenset(json.loads(VLLM_FLAGS_FILE.read_text())["flags"])


def _kebab(arg: str) -> str:
    """`--max_num_seqs=4` -> `--max-num-seqs=4`: vLLM's parser takes both spellings."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


def unknown_flags(args: list[str]) -> list[str]:
    """The flags in `args` (left over by the simulator's parser) that vLLM does not know either.
    vLLM's parser also takes `--flag=value` and `--json-flag.key` forms."""
    unknown = []
    for arg in args:
        if not arg.startswith("-") or len(arg) < 2 or not (arg[1].isalpha() or arg[1] == "-"):
            continue  # a value
        name = arg.partition("=")[0]
        if name.startswith("--"):
            name = name.split(".")[0]
        if name not in vllm_flags():
            unknown.append(arg)
    return unknown


def model_context_length(model: str) -> int | None:
    """max_position_embeddings of a local model folder, which vLLM takes as max_model_len."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def parse_args(argv: list[str]) -> SimConfig:
    parser = build_parser()
    argv = [_kebab(arg) for arg in argv]
    # `vllm serve MODEL --flags`: the model comes first. It is not an argparse positional, which
    # would swallow the value of the first unknown flag (`--dtype bfloat16`).
    model_tag = argv[0] if argv and not argv[0].startswith("-") else None
    args, unknown = parser.parse_known_args(argv[1:] if model_tag else argv)
    model = args.model or model_tag
    if not model:
        parser.error("a model is required: `python -m agent.sim MODEL` or `--model MODEL`")
    if refused := unknown_flags(unknown):
        parser.error(f"unrecognized arguments: {' '.join(refused)}")
    if args.max_model_len is None:
        args.max_model_len = model_context_length(model) or DEFAULT_MAX_MODEL_LEN
    kv_tokens = args.kv_cache_tokens
    if args.num_gpu_blocks_override:
        kv_tokens = args.num_gpu_blocks_override * args.block_size
    for name in ("max_num_seqs", "max_model_len", "block_size", "max_num_batched_tokens"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return SimConfig(
        model=model,
        served_model_names=args.served_model_names,
        host=args.host,
        port=args.port,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        kv_cache_tokens=kv_tokens,
        prefill_overhead_s=args.prefill_overhead_s,
        prefill_per_token_s=args.prefill_per_token_s,
        inter_token_latency_s=args.inter_token_latency_s,
        decode_slowdown_per_seq=args.decode_slowdown_per_seq,
        default_max_tokens=args.default_max_tokens,
        model_load_delay_s=args.model_load_delay_s,
        legacy_kv_metric=args.legacy_kv_metric,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        api_keys=args.api_keys
        or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else []),
        fault_error_rates=args.fault_error_rates,
        fault_hang_rate=args.fault_hang_rate,
        fault_stream_abort_rate=args.fault_stream_abort_rate,
        fault_hang_s=args.fault_hang_s,
        fault_crash_after=args.fault_crash_after,
        fault_slow_start_s=args.fault_slow_start_s,
        ignored_args=unknown,
    )
