"""Cloud-init user data that installs and starts the node agent on a fresh cloud machine.

The machine gets the agent's environment (mode 0600: it holds the per-instance token) and the
bootstrap script `agent/bootstrap.sh` (read at runtime from this repository, so cloud machines
run exactly the script the SSH adapter runs), then optionally formats and mounts the model-cache
volume, and starts the agent:
- plain flavors: the bootstrap on the machine, as a systemd service; it fetches the agent bundle
  from `WORKER_AGENT_URL` (set by the control plane in the agent's environment) and verifies
  `WORKER_AGENT_SHA256` before starting anything. Stock Ubuntu images lack `python3 -m venv`,
  which the bootstrap needs for the agent's requirements: cloud-init installs `python3-venv`;
- flavors with a worker image: `docker run` of that image, whose entrypoint is the same
  bootstrap in foreground mode (the same verification, inside the container). The container
  shares the host's IPC namespace (tensor parallelism exchanges tensors through shared memory,
  which docker's default 64 MB cannot hold), gets the GPUs (NVIDIA: `--gpus all`; ROCm: the
  devices, group and seccomp profile AMD documents for vLLM) and the model cache folder.

The document is JSON after the `#cloud-config` header: YAML is a superset of JSON, so cloud-init
reads it, and no value can break the quoting.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping
from pathlib import Path

from activities.providers.base import InvalidRequestError

log = logging.getLogger(__name__)

BOOTSTRAP_PATH = Path(__file__).resolve().parents[2] / "agent" / "bootstrap.sh"
ENV_FILE = "/etc/inventiv/agent.env"
DOCKER_ENV_FILE = "/etc/inventiv/docker.env"
INSTALL_DIR = "/opt/inventiv"
BOOTSTRAP_FILE = f"{INSTALL_DIR}/bootstrap.sh"


def read_bootstrap(path: Path = BOOTSTRAP_PATH) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InvalidRequestError(f"agent bootstrap script missing at {path}") from None


def env_file(env: Mapping[str, str]) -> str:
    """`KEY='value'` lines a POSIX shell can source (`set -a; . FILE`)."""
    for key in env:
        if not key.replace("_", "").isalnum() or key[0].isdigit():
            raise InvalidRequestError(f"invalid environment variable name {key!r}")
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))


def mount_command(device: str, mount_dir: str) -> str:
    """Wait for the volume (AWS attaches it once the machine runs), format it if it is blank,
    mount it, and keep it mounted across reboots."""
    dev, target = shlex.quote(device), shlex.quote(mount_dir)
    return (
        f"i=0; while [ ! -e {dev} ] && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done; "
        f"blkid {dev} >/dev/null || mkfs.ext4 -q {dev}; mkdir -p {target}; "
        f"mountpoint -q {target} || mount {dev} {target}; "
        f"grep -q ' {mount_dir} ' /etc/fstab || echo '{device} {mount_dir} ext4 defaults,nofail 0 2'"
        " >> /etc/fstab"
    )


def docker_env(env_path: str, docker_env_path: str) -> str:
    """docker's --env-file takes values verbatim: derive one from the shell-quoted env file."""
    return (
        f"set -a; . {env_path}; set +a; umask 077; env | grep -E "
        "'^(INVENTIV_AGENT_|WORKER_|HF_|AWS_|NVIDIA_|HIP_|TORCH_|NCCL_|VLLM_|FI_)' "
        f"> {docker_env_path}; "
    )


# What each accelerator needs inside a container (ROCm: AMD's "vLLM inference on ROCm" guide).
GPU_FLAGS = {
    "nvidia": ("--gpus", "all"),
    "amd": (
        "--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video",
        "--cap-add", "SYS_PTRACE", "--security-opt", "seccomp=unconfined",
    ),
}  # fmt: skip


def docker_run(
    image: str, accelerator: str, name: str, env_path: str, model_cache_dir: str | None = None
) -> str:
    """Run the worker image with the host's network, IPC namespace and GPUs, and the model cache
    at the same path inside; it restarts with the machine."""
    args = ["docker", "run", "-d", "--name", name, "--restart", "unless-stopped"]
    args += ["--network", "host", "--ipc", "host", *GPU_FLAGS.get(accelerator, ())]
    if model_cache_dir:
        args += ["-v", f"{model_cache_dir}:{model_cache_dir}"]
    args += ["--env-file", env_path, "-e", "WORKER_AGENT_MODE=foreground", image]
    return f"docker rm -f {shlex.quote(name)} >/dev/null 2>&1; " + shlex.join(args)


def render_user_data(
    env: Mapping[str, str],
    *,
    worker_image: str | None = None,
    accelerator: str = "cpu",
    model_volume: tuple[str, str] | None = None,
    bootstrap_path: Path = BOOTSTRAP_PATH,
) -> str:
    """User data for `env` (the agent's environment). `model_volume` is (device, mount folder)."""
    env = {"WORKER_AGENT_MODE": "systemd", "WORKER_INSTALL_DIR": INSTALL_DIR, **env}
    runcmd: list[list[str]] = []
    packages: list[str] = []
    if model_volume is not None:
        runcmd.append(["sh", "-c", mount_command(*model_volume)])
    if worker_image:
        cache = env.get("INVENTIV_AGENT_MODEL_CACHE_DIR")
        runcmd.append(["sh", "-c", docker_env(ENV_FILE, DOCKER_ENV_FILE)
                       + docker_run(worker_image, accelerator, "inventiv-agent", DOCKER_ENV_FILE,
                                    cache)])  # fmt: skip
    else:
        packages.append("python3-venv")
        if "WORKER_AGENT_URL" not in env:
            log.warning(
                "no WORKER_AGENT_URL in the agent's environment: the machine can only start an "
                "agent its image already holds (WORKER_AGENT_DIR)"
            )
        runcmd.append(["sh", "-c", f"set -a; . {ENV_FILE}; set +a; exec sh {BOOTSTRAP_FILE}"])
    document = {
        **({"package_update": True, "packages": packages} if packages else {}),
        "write_files": [
            {"path": ENV_FILE, "permissions": "0600", "owner": "root:root",
             "content": env_file(env)},
            {"path": BOOTSTRAP_FILE, "permissions": "0755", "owner": "root:root",
             "content": read_bootstrap(bootstrap_path)},
        ],
        "runcmd": runcmd,
    }  # fmt: skip
    return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
