"""Worker flavors and the cloud-init user data: what a machine actually receives."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from activities.providers.base import CreateRequest, InstanceOffer, InvalidRequestError
from activities.providers.cloud_init import BOOTSTRAP_PATH, env_file, render_user_data
from activities.providers.flavors import FLAVORS, agent_environment, get_flavor
from activities.providers.images import WorkerImageSettings
from agent.supervisor import engine_flags

ROOT = Path(__file__).resolve().parents[2]


def _request(flavor: str, **kwargs: object) -> CreateRequest:
    return CreateRequest(
        instance_id="i-1",
        instance_type="t",
        model="meta-llama/Llama-3.1-8B-Instruct",
        served_name="llama",
        flavor=flavor,
        gpu_count=2,
        **kwargs,  # type: ignore[arg-type]
    )


def test_flavor_images_and_defaults() -> None:
    h100 = get_flavor("NVIDIA-H100")  # the specification's spelling
    assert h100.worker_image == "inventiv-worker-nvidia"
    assert h100.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    mi300 = get_flavor("AMD-MI300")
    assert mi300.worker_image == "inventiv-worker-rocm"
    for flavor in FLAVORS.values():  # every image is built by a Dockerfile of the repository
        assert (flavor.worker_image is None) == (flavor.dockerfile is None)
        if flavor.dockerfile:
            assert (ROOT / flavor.dockerfile).is_file()
    registry = WorkerImageSettings(registry="ghcr.io/acme/", tag="v1")
    assert registry.image(h100) == "ghcr.io/acme/inventiv-worker-nvidia:v1"
    assert registry.image(get_flavor("cpu-sim")) is None
    with pytest.raises(InvalidRequestError, match="INVENTIV_WORKER_REGISTRY is unset"):
        WorkerImageSettings(registry=None).image(mi300)
    assert get_flavor("cpu-sim").command("/opt/py/bin/python") == "/opt/py/bin/python -m agent.sim"
    with pytest.raises(InvalidRequestError, match="unknown flavor 'tpu'; known: amd-mi300"):
        get_flavor("tpu")
    l4 = InstanceOffer("L4-1-24G", "L4", 1, 24, 8, 48, 0.75)
    with pytest.raises(InvalidRequestError, match="needs one of H100 GPUs; L4-1-24G has L4"):
        h100.check_offer(l4)
    get_flavor("nvidia-cuda12").check_offer(l4)
    get_flavor("cpu-sim").check_offer(l4)  # the simulator runs anywhere


def test_agent_environment_contract() -> None:
    request = _request(
        "nvidia-h100",
        engine_args={"max-model-len": 8192, "gpu-memory-utilization": 0.8},
        agent_env={"INVENTIV_AGENT_TOKEN": "tok", "INVENTIV_AGENT_CONTROL_PLANE_URL": "http://cp"},
    )
    env = agent_environment(request, provider_env={"INVENTIV_AGENT_MODEL_S3_PREFIX": "s3://b/m"})
    assert env["INVENTIV_AGENT_ENGINE_COMMAND"] == "vllm serve"
    assert env["INVENTIV_AGENT_GPU_COUNT"] == "2"
    assert env["INVENTIV_AGENT_PORT"] == "8090" and env["INVENTIV_AGENT_ENGINE_PORT"] == "8000"
    args = json.loads(env["INVENTIV_AGENT_ENGINE_ARGS"])
    # The deployment's arguments override the flavor's defaults, the rest stay.
    assert args == {
        "gpu-memory-utilization": 0.8,
        "enable-prefix-caching": True,
        "max-model-len": 8192,
    }
    assert env["INVENTIV_AGENT_MODEL_S3_PREFIX"] == "s3://b/m"
    assert env["INVENTIV_AGENT_TOKEN"] == "tok" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    sim = agent_environment(_request("cpu-sim"), python="/usr/bin/python3.12")
    assert sim["INVENTIV_AGENT_ENGINE_COMMAND"] == "/usr/bin/python3.12 -m agent.sim"
    assert sim["INVENTIV_AGENT_GPU_COUNT"] == "0"


def test_env_file_survives_a_real_shell(tmp_path: Path) -> None:
    nasty = {"A_QUOTE": 'it\'s $HOME `id` "x"', "B_SPACES": "a b  c", "C_JSON": '{"k": [1, 2]}'}
    path = tmp_path / "agent.env"
    path.write_text(env_file(nasty))
    out = subprocess.run(
        ["sh", "-c", f"set -a; . {path}; set +a; env -0"], capture_output=True, check=True
    ).stdout
    seen = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    assert {k: seen[k] for k in nasty} == nasty
    with pytest.raises(InvalidRequestError, match="invalid environment variable name"):
        env_file({"BAD;rm -rf /": "x"})


def test_user_data_documents(caplog: pytest.LogCaptureFixture) -> None:
    env = {"INVENTIV_AGENT_TOKEN": "tok", "WORKER_AGENT_SHA256": "ab" * 32}
    plain = render_user_data(env)
    assert "no WORKER_AGENT_URL" in caplog.text  # nothing to fetch the agent from: said
    caplog.clear()
    render_user_data({**env, "WORKER_AGENT_URL": "https://cp/api/v1/agents/bundle"})
    assert "WORKER_AGENT_URL" not in caplog.text
    assert plain.startswith("#cloud-config\n")
    document = json.loads(plain.split("\n", 1)[1])
    env_entry, bootstrap = document["write_files"]
    assert (
        env_entry["permissions"] == "0600" and "WORKER_AGENT_MODE=systemd" in env_entry["content"]
    )
    assert bootstrap["content"] == BOOTSTRAP_PATH.read_text()  # the agent's own script, verbatim
    assert document["runcmd"] == [
        [
            "sh",
            "-c",
            "set -a; . /etc/inventiv/agent.env; set +a; exec sh /opt/inventiv/bootstrap.sh",
        ]
    ]
    gpu = json.loads(
        render_user_data(
            env,
            worker_image="registry.example.com/inventiv-worker-nvidia:test",
            accelerator="nvidia",
            model_volume=("/dev/disk/by-id/scsi-0SCW_sbs_volume-v1", "/mnt/models"),
        ).split("\n", 1)[1]
    )
    mount, run = (command[2] for command in gpu["runcmd"])
    assert "mount /dev/disk/by-id/scsi-0SCW_sbs_volume-v1 /mnt/models" in mount
    assert "--gpus all" in run and "registry.example.com/inventiv-worker-nvidia:test" in run
    assert "--ipc host" in run  # tensor parallelism's shared memory
    assert "WORKER_AGENT_MODE=foreground" in run
    assert "packages" not in gpu  # the bootstrap runs inside the image
    assert document["packages"] == ["python3-venv"]  # stock Ubuntu lacks `python3 -m venv`


def test_false_engine_flags_turn_vllm_booleans_off() -> None:
    """A deployment that sets `enable-prefix-caching: false` against the H100 flavor's default
    gets `--no-enable-prefix-caching` (vLLM's form), not a silently dropped flag."""
    env = agent_environment(_request("nvidia-h100", engine_args={"enable-prefix-caching": False}))
    flags = engine_flags(json.loads(env["INVENTIV_AGENT_ENGINE_ARGS"]))
    assert "--no-enable-prefix-caching" in flags and "--enable-prefix-caching" not in flags
    assert engine_flags({"legacy-kv-metric": False}) == []  # a plain switch: off by default
