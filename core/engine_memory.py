"""Does the model's context fit the GPUs? vLLM refuses to start when it does not.

vLLM loads the weights, then gives what is left of `gpu_memory x gpu-memory-utilization` (per
GPU, all GPUs of the tensor-parallel group together) to the KV cache, and refuses to start when
one sequence of `max-model-len` tokens (the model's native context when unset) cannot fit. A
machine that would boot only to exit costs a boot timeout, so the API checks it before anything is
provisioned, from a small table of known architectures (weights in the table's dtype, KV cache
per token = 2 x layers x KV heads x head dim x bytes per value):

- `max-model-len` set above what fits: refused, naming the number that would fit;
- unset, and the native context does not fit: the largest that fits is chosen (a multiple of
  vLLM's 16-token block), and the deployment's effective engine arguments say so;
- an unknown model (or a quantization the table cannot size) is not checked.

An estimate: the activation peak vLLM profiles and the CUDA context are a fixed reserve per GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 2**30
BLOCK_TOKENS = 16  # vLLM's default KV block
RESERVE_PER_GPU = 2 * GIB  # CUDA context, activations and CUDA graphs (vLLM profiles them)
VLLM_DEFAULT_UTILIZATION = 0.9

_DTYPE_BYTES: dict[str, float] = {
    "auto": 2,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
}
_KV_DTYPE_BYTES: dict[str, float | None] = {
    "auto": None,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "bfloat16": 2,
}
# Bytes per parameter of the weights of a quantized checkpoint.
_QUANTIZED_BYTES: dict[str, float] = {"awq": 0.5, "gptq": 0.5, "fp8": 1.0}


@dataclass(frozen=True)
class Architecture:
    """What sizes a model in memory (its config.json)."""

    parameters: float  # count
    layers: int  # num_hidden_layers
    kv_heads: int  # num_key_value_heads
    head_dim: int
    native_context: int  # max_position_embeddings

    def kv_bytes_per_token(self, value_bytes: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * value_bytes


# From each model's config.json on Hugging Face (keys lower-case).
KNOWN_MODELS: dict[str, Architecture] = {
    "meta-llama/llama-3.2-1b-instruct": Architecture(1.24e9, 16, 8, 64, 131072),
    "meta-llama/llama-3.2-3b-instruct": Architecture(3.21e9, 28, 8, 128, 131072),
    "meta-llama/llama-3.1-8b-instruct": Architecture(8.03e9, 32, 8, 128, 131072),
    "meta-llama/llama-3.1-70b-instruct": Architecture(70.6e9, 80, 8, 128, 131072),
    "meta-llama/llama-3.3-70b-instruct": Architecture(70.6e9, 80, 8, 128, 131072),
    "mistralai/mistral-7b-instruct-v0.3": Architecture(7.25e9, 32, 8, 128, 32768),
    "qwen/qwen2.5-7b-instruct": Architecture(7.62e9, 28, 4, 128, 32768),
    "qwen/qwen2.5-72b-instruct": Architecture(72.7e9, 80, 8, 128, 32768),
}


class ContextDoesNotFitError(ValueError):
    """The deployment's model or context cannot fit the instance type's GPUs."""


@dataclass(frozen=True)
class ContextFit:
    fits_tokens: int  # the longest context the KV cache holds
    native_context: int
    chosen: int | None  # max-model-len the platform sets (unset and the native one won't fit)


def fit_context(
    model: str,
    engine_args: Mapping[str, Any],
    *,
    gpu_memory_gb: float,
    gpu_count: int,
) -> ContextFit | None:
    """Check `engine_args` (the flavor's defaults merged with the deployment's) for `model` on
    `gpu_count` GPUs of `gpu_memory_gb` GiB each. None: not checked (unknown model or size)."""
    arch = KNOWN_MODELS.get(model.lower())
    if arch is None or gpu_memory_gb <= 0 or gpu_count <= 0:
        return None
    quantization = engine_args.get("quantization")
    if quantization is not None:
        weight_bytes = _QUANTIZED_BYTES.get(str(quantization).lower())
    else:
        weight_bytes = _DTYPE_BYTES.get(str(engine_args.get("dtype", "auto")).lower())
    kv_dtype = str(engine_args.get("kv-cache-dtype", "auto")).lower()
    if weight_bytes is None or kv_dtype not in _KV_DTYPE_BYTES:
        return None
    # "auto": the model's dtype (16-bit for a quantized checkpoint).
    kv_bytes = _KV_DTYPE_BYTES[kv_dtype] or (2 if quantization is not None else weight_bytes)
    utilization = float(engine_args.get("gpu-memory-utilization", VLLM_DEFAULT_UTILIZATION))
    usable = gpu_memory_gb * GIB * utilization * gpu_count - RESERVE_PER_GPU * gpu_count
    weights = arch.parameters * weight_bytes
    per_token = arch.kv_bytes_per_token(kv_bytes)
    where = f"{gpu_count} x {gpu_memory_gb:g} GiB at gpu-memory-utilization {utilization:g}"
    if weights >= usable:
        raise ContextDoesNotFitError(
            f"{model} needs about {weights / GIB:.0f} GiB for its weights alone, more than "
            f"{where} leaves ({max(usable, 0) / GIB:.0f} GiB): choose an instance type with more "
            "GPU memory or a quantized model"
        )
    fits = int((usable - weights) // per_token) // BLOCK_TOKENS * BLOCK_TOKENS
    if fits < BLOCK_TOKENS:
        raise ContextDoesNotFitError(
            f"{model}'s weights leave no room for its KV cache on {where}: choose an instance "
            "type with more GPU memory"
        )
    wanted = engine_args.get("max-model-len")
    if wanted is not None:
        if int(wanted) > fits:
            raise ContextDoesNotFitError(
                f"max-model-len {wanted} does not fit {model} on {where}: at most {fits} tokens "
                f"fit the KV cache; set max-model-len to {fits} or less"
            )
        return ContextFit(fits, arch.native_context, None)
    chosen = fits if arch.native_context > fits else None
    return ContextFit(fits, arch.native_context, chosen)


def effective_engine_args(
    model: str,
    engine_args: Mapping[str, Any],
    *,
    gpu_memory_gb: float,
    gpu_count: int,
) -> dict[str, Any]:
    """`engine_args` with the max-model-len the platform chooses when the native context does not
    fit; raises ContextDoesNotFitError as `fit_context` does."""
    fit = fit_context(model, engine_args, gpu_memory_gb=gpu_memory_gb, gpu_count=gpu_count)
    if fit is None or fit.chosen is None:
        return dict(engine_args)
    return {**engine_args, "max-model-len": fit.chosen}
