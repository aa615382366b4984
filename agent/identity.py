"""The agent's identity as data: version, build date and checksum, read without importing it.

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
