"""Engine flag policy: which `vllm serve` flags a deployment may set, and with what values.

Members may set the flags of `MEMBER_FLAGS` (performance and serving knobs, typed and bounded,
and the simulator's timing knobs). Flags that load code, open the network or name files on the
worker (`trust-remote-code`, `*-plugin`, `*-cls`, `host`, `port`, paths, ...) run with the
worker's rights on the machine, so they need a deployment an admin marked `trusted`; a trusted
deployment may set any flag. Anything else is refused, naming the flag.

The README's "Engine flags" table is generated from this module
(`python -m core.engine_flags --write README.md`; tests/api/test_engine_flags.py compares).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

FLAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Platform-managed: the agent sets them itself.
MANAGED = frozenset({"model", "served-model-name"})


@dataclass(frozen=True)
class FlagSpec:
    kind: str  # int | float | bool | choice | text
    meaning: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why the value does not fit, or None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind in ("int", "float"):
            number_types: tuple[type, ...] = (int,) if self.kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, number_types):
                return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
            number = float(cast(float, value))
            if self.minimum is not None and number < self.minimum:
                return f"must be at least {self.minimum:g}"
            if self.maximum is not None and number > self.maximum:
                return f"must be at most {self.maximum:g}"
            return None
        if not isinstance(value, str):
            return "must be a string"
        if self.kind == "choice" and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.kind == "text" and (len(value) > 128 or not re.fullmatch(r"[\w.:,=+-]*", value)):
            return "must be at most 128 letters, digits or . : , = + - _"
        return None


def _int(meaning: str, lo: float = 1, hi: float = 2**31 - 1) -> FlagSpec:
    return FlagSpec("int", meaning, lo, hi)


def _float(meaning: str, lo: float = 0, hi: float = 3600) -> FlagSpec:
    return FlagSpec("float", meaning, lo, hi)


def _bool(meaning: str) -> FlagSpec:
    return FlagSpec("bool", meaning)


def _choice(meaning: str, *choices: str) -> FlagSpec:
    return FlagSpec("choice", meaning, choices=choices)


MEMBER_FLAGS: dict[str, FlagSpec] = {
    "max-model-len": _int("context length, tokens", 16, 10_000_000),
    "gpu-memory-utilization": _float("share of GPU memory vLLM may use", 0.05, 1.0),
    "max-num-seqs": _int("sequences batched at once", 1, 65_536),
    "max-num-batched-tokens": _int("tokens per scheduler step", 16, 10_000_000),
    "tensor-parallel-size": _int("GPUs a model is split over", 1, 64),
    "pipeline-parallel-size": _int("pipeline stages", 1, 64),
    "dtype": _choice(
        "weight and activation type", "auto", "half", "float16", "bfloat16", "float", "float32"
    ),
    "kv-cache-dtype": _choice("KV cache type", "auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "quantization": _choice(
        "weight quantization",
        "awq",
        "awq_marlin",
        "gptq",
        "gptq_marlin",
        "fp8",
        "bitsandbytes",
        "compressed-tensors",
        "marlin",
    ),
    "block-size": _int("KV cache block size, tokens", 1, 256),
    "swap-space": _float("CPU swap space per GPU, GiB", 0, 1024),
    "cpu-offload-gb": _float("weights offloaded to CPU memory, GiB", 0, 1024),
    "seed": _int("random seed", 0),
    "enable-prefix-caching": _bool("reuse the KV blocks of shared prompt prefixes"),
    "enable-chunked-prefill": _bool("split long prefills across scheduler steps"),
    "enforce-eager": _bool("no CUDA graphs"),
    "max-logprobs": _int("most log-probabilities a request may ask for", 0, 1000),
    "revision": FlagSpec("text", "model revision (branch, tag or commit) to load"),
    "tokenizer-mode": _choice("tokenizer implementation", "auto", "slow", "mistral"),
    "enable-auto-tool-choice": _bool("let the model decide to call tools"),
    "tool-call-parser": _choice(
        "built-in tool-call parser",
        "hermes",
        "mistral",
        "llama3_json",
        "llama4_json",
        "granite",
        "internlm",
        "jamba",
        "pythonic",
        "qwen3_coder",
        "deepseek_v3",
    ),
    "reasoning-parser": _choice("built-in reasoning parser", "deepseek_r1", "qwen3", "granite"),
    "enable-prompt-tokens-details": _bool("report cached prompt tokens in usage"),
    "disable-log-requests": _bool("no per-request log lines"),
    "disable-log-stats": _bool("no periodic statistics in the log"),
    "num-gpu-blocks-override": _int("KV budget in blocks", 1),
    # The simulator's knobs (agent/sim): timing and fault injection, nothing else.
    "kv-cache-tokens": _int("simulator: KV budget in tokens", 1),
    "prefill-overhead-s": _float("simulator: fixed prefill time"),
    "prefill-per-token-s": _float("simulator: prefill time per prompt token"),
    "inter-token-latency-s": _float("simulator: time between output tokens"),
    "decode-slowdown-per-seq": _float("simulator: decode slowdown per running sequence"),
    "default-max-tokens": _int("simulator: output tokens when max_tokens is unset", 1),
    "model-load-delay-s": _float("simulator: time to load the model"),
    "legacy-kv-metric": _bool("simulator: pre-0.7 KV usage metric name"),
    "fault-error-rate": FlagSpec("text", "simulator: share of requests answered with an error"),
    "fault-hang-rate": _float("simulator: share of requests that hang", 0, 1),
    "fault-hang-s": _float("simulator: how long a hanging request waits"),
    "fault-stream-abort-rate": _float("simulator: share of streams cut half-way", 0, 1),
    "fault-crash-after": _int("simulator: exit when request N+1 arrives (0: never)", 0),
    "fault-slow-start-s": _float("simulator: extra start-up delay"),
}

# Refused without a trusted deployment: they load code, open the network or name files.
TRUSTED_FLAGS: dict[str, str] = {
    "trust-remote-code": "runs the model repository's Python code on the worker",
    "tokenizer": "loads a tokenizer (and with remote code, its code) from another repository",
    "tool-parser-plugin": "imports a Python file as a tool parser",
    "worker-extension-cls": "imports a class into every GPU worker",
    "worker-cls": "replaces the GPU worker with an imported class",
    "chat-template": "reads a template file from the worker's disk",
    "download-dir": "writes model files to another folder",
    "load-format": "chooses a model loader, some of which run code",
    "hf-overrides": "overrides the model's configuration",
    "enable-lora": "loads adapters from paths or repositories",
    "lora-modules": "loads adapters from paths or repositories",
    "host": "binds the engine to another address",
    "port": "binds the engine to another port",
    "api-key": "changes how the engine authenticates callers",
    "ssl-keyfile": "reads a key file",
    "ssl-certfile": "reads a certificate file",
    "root-path": "changes the engine's URL layout",
    "allowed-origins": "opens the engine to browsers of other sites",
    "distributed-executor-backend": "starts Ray or other executors that open ports",
}
TRUSTED_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r".*-plugins?$"), "loads a plugin (code)"),
    (re.compile(r".*-cls$"), "imports a Python class"),
    (re.compile(r".*(-file|-path|-dir|-config)$"), "names a file on the worker"),
    (re.compile(r"^(.*-)?(host|port|url|address)$"), "opens the network"),
)


def needs_trust(flag: str) -> str | None:
    """Why the flag needs a trusted deployment, or None."""
    if flag in TRUSTED_FLAGS:
        return TRUSTED_FLAGS[flag]
    for pattern, why in TRUSTED_PATTERNS:
        if pattern.match(flag):
            return why
    return None


def engine_flag_problems(engine_args: dict[str, Any], *, trusted: bool) -> list[str]:
    """What is wrong with a deployment's engine flags (without `volumes`), each naming its
    flag; empty when they may be used."""
    problems = []
    for flag, value in engine_args.items():
        if not FLAG_NAME.match(flag):
            problems.append(f"engine flag {flag!r} is not a flag name (without leading dashes)")
        elif flag in MANAGED:
            problems.append(f"engine flag {flag!r} is set by the platform")
        elif isinstance(value, dict):
            problems.append(f"engine flag {flag!r}: a value is a string, number, bool or list")
        elif trusted:
            continue
        elif (why := needs_trust(flag)) is not None:
            problems.append(
                f"engine flag {flag!r} {why}: only a deployment an admin marked trusted may set it"
            )
        elif (spec := MEMBER_FLAGS.get(flag)) is None:
            problems.append(
                f"engine flag {flag!r} is not on the allowed list (README, 'Engine flags')"
            )
        elif (problem := spec.problem(value)) is not None:
            problems.append(f"engine flag {flag!r} {problem}")
    return problems


BEGIN, END = "<!-- engine-flags:begin -->", "<!-- engine-flags:end -->"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _range(spec: FlagSpec) -> str:
    if spec.kind == "choice":
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.kind in ("int", "float") and spec.minimum is not None and spec.maximum is not None:
        return f"{_number(spec.minimum)} to {_number(spec.maximum)}"
    if spec.kind in ("int", "float") and spec.minimum is not None:
        return f"≥ {_number(spec.minimum)}"
    return ""


def render() -> str:
    lines = [BEGIN, "", "| flag | type | values | meaning |", "|---|---|---|---|"]
    for flag, spec in MEMBER_FLAGS.items():
        lines.append(f"| `{flag}` | {spec.kind} | {_range(spec)} | {spec.meaning} |")
    lines += ["", "Only with `trusted` (set by an admin):", ""]
    lines += ["| flag | why |", "|---|---|"]
    lines += [f"| `{flag}` | {why} |" for flag, why in TRUSTED_FLAGS.items()]
    lines += [
        f"| `{pattern.pattern.replace('|', chr(92) + '|')}` (pattern) | {why} |"
        for pattern, why in TRUSTED_PATTERNS
    ]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="replace the block in this README")
    args = parser.parse_args()
    if not args.write:
        print(render())
        return
    text = args.write.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    args.write.write_text(pattern.sub(lambda _m: render(), text))


if __name__ == "__main__":
    main()
