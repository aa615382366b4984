"""The context check vLLM would otherwise fail at start: weights + KV cache against GPU memory."""

from __future__ import annotations

import pytest

from activities.providers.base import InvalidRequestError
from activities.providers.flavors import get_flavor
from core.engine_memory import (
    GIB,
    KNOWN_MODELS,
    RESERVE_PER_GPU,
    ContextDoesNotFitError,
    effective_engine_args,
    fit_context,
)

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def test_llama_8b_on_one_l4_fits_about_38k_tokens_and_is_chosen() -> None:
    fit = fit_context(LLAMA_8B, {"gpu-memory-utilization": 0.9}, gpu_memory_gb=24, gpu_count=1)
    assert fit is not None
    # By hand: 24 GiB x 0.9 - 2 GiB reserve - 8.03e9 x 2 bytes of weights, divided by
    # 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token.
    by_hand = (24 * GIB * 0.9 - RESERVE_PER_GPU - 8.03e9 * 2) / (128 * 1024)
    assert fit.fits_tokens == int(by_hand) // 16 * 16
    assert 30_000 < fit.fits_tokens < 40_000 and fit.native_context == 131072
    assert fit.chosen == fit.fits_tokens  # its native 128k context would not fit
    args = effective_engine_args(LLAMA_8B, {}, gpu_memory_gb=24, gpu_count=1)
    assert args["max-model-len"] % 16 == 0


def test_a_context_that_fits_natively_is_left_alone() -> None:
    fit = fit_context(LLAMA_8B, {}, gpu_memory_gb=80, gpu_count=2)
    assert fit is not None and fit.chosen is None and fit.fits_tokens > 131072
    assert effective_engine_args(LLAMA_8B, {"x": 1}, gpu_memory_gb=80, gpu_count=2) == {"x": 1}


def test_max_model_len_above_what_fits_names_the_number() -> None:
    fits = fit_context(LLAMA_8B, {}, gpu_memory_gb=24, gpu_count=1)
    assert fits is not None
    with pytest.raises(ContextDoesNotFitError, match=f"at most {fits.fits_tokens} tokens"):
        fit_context(LLAMA_8B, {"max-model-len": 65536}, gpu_memory_gb=24, gpu_count=1)
    ok = fit_context(LLAMA_8B, {"max-model-len": 8192}, gpu_memory_gb=24, gpu_count=1)
    assert ok is not None and ok.chosen is None


def test_weights_that_cannot_fit_are_refused() -> None:
    with pytest.raises(ContextDoesNotFitError, match="132 GiB for its weights alone"):
        fit_context("meta-llama/Llama-3.1-70B-Instruct", {}, gpu_memory_gb=48, gpu_count=1)
    # Tensor parallelism over 2 x 80 GiB holds them, with a shorter context chosen.
    fit = fit_context("meta-llama/Llama-3.1-70B-Instruct", {}, gpu_memory_gb=80, gpu_count=2)
    assert fit is not None and fit.chosen is not None and fit.chosen < 131072


def test_dtype_and_kv_cache_dtype_change_the_answer() -> None:
    base = fit_context(LLAMA_8B, {}, gpu_memory_gb=24, gpu_count=1)
    fp8_kv = fit_context(LLAMA_8B, {"kv-cache-dtype": "fp8"}, gpu_memory_gb=24, gpu_count=1)
    awq = fit_context(LLAMA_8B, {"quantization": "awq"}, gpu_memory_gb=24, gpu_count=1)
    assert base is not None and fp8_kv is not None and awq is not None
    assert abs(fp8_kv.fits_tokens - 2 * base.fits_tokens) <= 32  # 1 byte per value, not 2
    assert awq.fits_tokens > base.fits_tokens
    with pytest.raises(ContextDoesNotFitError):
        fit_context(LLAMA_8B, {"dtype": "float32"}, gpu_memory_gb=24, gpu_count=1)


def test_unknown_models_and_sizes_are_not_checked() -> None:
    assert (
        fit_context("org/chat-model", {"max-model-len": 10**6}, gpu_memory_gb=24, gpu_count=1)
        is None
    )
    assert (
        fit_context(LLAMA_8B, {"quantization": "bitsandbytes"}, gpu_memory_gb=24, gpu_count=1)
        is None
    )
    assert fit_context(LLAMA_8B, {}, gpu_memory_gb=0, gpu_count=0) is None
    assert all(key == key.lower() for key in KNOWN_MODELS)


def test_flavors_apply_it_with_their_defaults() -> None:
    h100 = get_flavor("nvidia-h100")  # gpu-memory-utilization 0.92 by default
    args = h100.engine_args_for(
        LLAMA_8B, {"enable-prefix-caching": False}, gpu_memory_gb=80, gpu_count=1
    )
    assert args == {"enable-prefix-caching": False}  # 128k fits one H100 at 0.92
    cuda = get_flavor("nvidia-cuda12")
    chosen = cuda.engine_args_for(LLAMA_8B, {}, gpu_memory_gb=24, gpu_count=1)
    assert 30_000 < chosen["max-model-len"] < 40_000
    with pytest.raises(InvalidRequestError, match="max-model-len 131072 does not fit"):
        cuda.engine_args_for(LLAMA_8B, {"max-model-len": 131072}, gpu_memory_gb=24, gpu_count=1)
    # CPU flavors hold no GPU memory to check.
    assert get_flavor("cpu-sim").engine_args_for(LLAMA_8B, {}, gpu_memory_gb=24, gpu_count=1) == {}
