"""The agent's identity as data: version, build date and bundle checksum, read without importing
the agent; the integrity rule that compares a machine's agent with it; the bundle machines install.

The bundle is every file of `agent/` (less bytecode and the record `agent/agent.sha256`) plus the
one core module it imports (`core/__init__.py`, `core/wire.py`). Its checksum is the SHA-256 of
its manifest: one `<sha256>  <path>` line per file, sorted by path, exactly what
`find . -type f | LC_ALL=C sort | xargs sha256sum` prints in the unpacked tree, which is how
`bootstrap.sh` verifies it on the machine before running anything (WORKER_AGENT_SHA256). A change
to any file, an added or a removed one changes the checksum. `agent/agent.py` carries the
`AGENT_VERSION = "X.Y.Z"` and `AGENT_BUILD_DATE = "YYYY-MM-DD"` lines that `version_tool` edits,
so a version bump changes the checksum too. The agent reports the checksum of its own files on
/info and in heartbeats: a claim the control plane compares, not a proof (README, "Security
model"). Standard library only, so the API and the worker read it without the agent's server.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent
VERSION_RE = re.compile(r'^AGENT_VERSION = "(\d+)\.(\d+)\.(\d+)"$', re.MULTILINE)
BUILD_DATE_RE = re.compile(r'^AGENT_BUILD_DATE = "([^"]*)"$', re.MULTILINE)
RECORD = "agent.sha256"  # in agent/: the recorded checksum, not shipped (it cannot cover itself)
CORE_FILES = ("core/__init__.py", "core/wire.py")
# Fixed archive metadata: the same files always give the same bytes (a reproducible archive).
ARCHIVE_MTIME = 946684800  # 2000-01-01T00:00:00Z


@dataclass(frozen=True)
class AgentIdentity:
    version: str
    build_date: str
    checksum: str  # SHA-256 of the bundle's manifest (every file's SHA-256)


def bundle_files(agent_dir: Path = AGENT_DIR) -> list[tuple[str, Path]]:
    """(path in the bundle, file here) for every bundled file, sorted by path."""
    files = [
        (f"agent/{path.relative_to(agent_dir).as_posix()}", path)
        for path in agent_dir.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.relative_to(agent_dir).parts
        and path.suffix != ".pyc"
        and path.relative_to(agent_dir).as_posix() != RECORD
    ]
    files += [(name, agent_dir.parent / name) for name in CORE_FILES]
    for name, _ in files:
        if "\\" in name or "\n" in name:  # sha256sum would escape it: bootstrap would disagree
            raise ValueError(f"cannot bundle a file named {name!r}")
    return sorted(files)


def manifest(agent_dir: Path = AGENT_DIR) -> str:
    """The bundle's manifest, in `sha256sum` format."""
    return _manifest((name, path.read_bytes()) for name, path in bundle_files(agent_dir))


def _manifest(files: Iterable[tuple[str, bytes]]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files)


def read_identity(agent_dir: Path = AGENT_DIR) -> AgentIdentity:
    """The identity of the agent in `agent_dir` (and the core files beside it)."""
    path = agent_dir / "agent.py"
    text = path.read_text()
    version = VERSION_RE.search(text)
    build_date = BUILD_DATE_RE.search(text)
    if version is None or build_date is None:
        raise ValueError(f"{path} lacks an AGENT_VERSION or AGENT_BUILD_DATE line")
    return AgentIdentity(
        version=".".join(version.groups()),
        build_date=build_date.group(1),
        checksum=hashlib.sha256(manifest(agent_dir).encode()).hexdigest(),
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
    """A reproducible tar.gz of the bundle's files (sorted, fixed times and owners), with the
    manifest beside them as MANIFEST.sha256, so bootstrap can name the files that differ."""
    files = [
        (name, path.read_bytes(), path.stat().st_mode) for name, path in bundle_files(agent_dir)
    ]
    listed = _manifest((name, data) for name, data, _ in files).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data, mode in [*files, ("MANIFEST.sha256", listed, 0o644)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o755 if mode & 0o100 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as packed:
        packed.write(buffer.getvalue())
    return output
