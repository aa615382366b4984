"""Cloud-init user data that installs and starts the node agent on a fresh cloud machine.

The machine gets two files and one command: the agent's environment (mode 0600: it holds the
per-instance token), the bootstrap script `agent/bootstrap.sh` (read at runtime from this
repository, so cloud machines run exactly the script the SSH adapter runs), and a command that
optionally formats and mounts the model-cache volume, then runs the bootstrap with that
environment. The bootstrap verifies `WORKER_AGENT_SHA256` before starting the agent.

The document is JSON after the `#cloud-config` header: YAML is a superset of JSON, so cloud-init
reads it, and no value can break the quoting.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from activities.providers.base import InvalidRequestError

BOOTSTRAP_PATH = Path(__file__).resolve().parents[2] / "agent" / "bootstrap.sh"
ENV_FILE = "/etc/inventiv/agent.env"
BOOTSTRAP_FILE = "/opt/inventiv/bootstrap.sh"


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
    """Format the volume if it is blank, mount it, and keep it mounted across reboots."""
    dev, target = shlex.quote(device), shlex.quote(mount_dir)
    return (
        f"blkid {dev} >/dev/null || mkfs.ext4 -q {dev}; mkdir -p {target}; "
        f"mountpoint -q {target} || mount {dev} {target}; "
        f"grep -q ' {mount_dir} ' /etc/fstab || echo '{device} {mount_dir} ext4 defaults,nofail 0 2'"
        " >> /etc/fstab"
    )


def render_user_data(
    env: Mapping[str, str],
    *,
    model_volume: tuple[str, str] | None = None,
    bootstrap_path: Path = BOOTSTRAP_PATH,
) -> str:
    """User data for `env` (the agent's environment). `model_volume` is (device, mount folder)."""
    runcmd: list[list[str]] = []
    if model_volume is not None:
        runcmd.append(["sh", "-c", mount_command(*model_volume)])
    runcmd.append(["sh", "-c", f"set -a; . {ENV_FILE}; set +a; exec sh {BOOTSTRAP_FILE}"])
    document = {
        "write_files": [
            {
                "path": ENV_FILE,
                "permissions": "0600",
                "owner": "root:root",
                "content": env_file(env),
            },
            {
                "path": BOOTSTRAP_FILE,
                "permissions": "0755",
                "owner": "root:root",
                "content": read_bootstrap(bootstrap_path),
            },
        ],
        "runcmd": runcmd,
    }
    return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
