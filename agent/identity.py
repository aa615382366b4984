"""The agent's identity as data: version, build date and checksum, read without importing it;
the integrity rule that compares a machine's agent with it; the bundle machines install.

`agent/agent.py` is the file a machine verifies (bootstrap.sh compares its SHA-256 with
WORKER_AGENT_SHA256), so it carries its own `AGENT_VERSION = "X.Y.Z"` and
`AGENT_BUILD_DATE = "YYYY-MM-DD"` lines: a version bump changes the checksum too. This module reads
those lines and hashes the file's bytes; the agent reports the result on /info and in heartbeats,
the control plane compares it with what machines report, and `version_tool` edits the same lines.
Standard library only, so the API and the worker read it without the agent's server and its
dependencies.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent
VERSION_RE = re.compile(r'^AGENT_VERSION = "(\d+)\.(\d+)\.(\d+)"$', re.MULTILINE)
BUILD_DATE_RE = re.compile(r'^AGENT_BUILD_DATE = "([^"]*)"$', re.MULTILINE)


@dataclass(frozen=True)
class AgentIdentity:
    version: str
    build_date: str
    checksum: str  # SHA-256 of agent/agent.py, as `sha256sum agent/agent.py` prints it


def read_identity(agent_dir: Path = AGENT_DIR) -> AgentIdentity:
    """The identity of the agent in `agent_dir`, from its agent.py."""
    path = agent_dir / "agent.py"
    source = path.read_bytes()
    text = source.decode()
    version = VERSION_RE.search(text)
    build_date = BUILD_DATE_RE.search(text)
    if version is None or build_date is None:
        raise ValueError(f"{path} lacks an AGENT_VERSION or AGENT_BUILD_DATE line")
    return AgentIdentity(
        version=".".join(version.groups()),
        build_date=build_date.group(1),
        checksum=hashlib.sha256(source).hexdigest(),
    )


@cache
def bundled_agent() -> AgentIdentity:
    """The agent shipped with this code (the one a machine downloads from the API)."""
    return read_identity()


def expected_agent(pinned_version: str | None = None) -> tuple[str, str]:
    """(version, checksum) a machine's agent must report: the pinned version (the setting
    INVENTIV_EXPECTED_AGENT_VERSION) or the bundled agent's, and always the bundled checksum."""
    bundled = bundled_agent()
    return pinned_version or bundled.version, bundled.checksum


def integrity_ok(version: str | None, checksum: str | None, pinned_version: str | None) -> bool:
    """One rule for the boot-time health check and for every heartbeat, so they never disagree."""
    return (version, checksum) == expected_agent(pinned_version)


def bundle(output: Path, agent_dir: Path = AGENT_DIR) -> Path:
    """A tar.gz of the agent package plus the one core module it imports (core.wire)."""
    core_dir = agent_dir.parent / "core"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w:gz") as archive:
        archive.add(agent_dir, arcname="agent", filter=keep)
        archive.add(core_dir / "__init__.py", arcname="core/__init__.py")
        archive.add(core_dir / "wire.py", arcname="core/wire.py")
    return output
