"""Agent version tooling: `python -m agent.version_tool checksum|bump|record|check|bundle FILE`.

`agent/agent.sha256` records the bundle checksum (agent/identity.py: the SHA-256 of the manifest
of every bundled file), the version it was recorded for and the manifest itself. `check` fails
when any bundled file no longer matches the record, naming it, so a change to the agent cannot
ship under the old version: `bump` raises the patch version and build date, then records.
`bundle` packs what a worker machine needs (agent/ and core/wire.py) for bootstrap.sh.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.identity import (
    AGENT_DIR,
    BUILD_DATE_RE,
    RECORD,
    VERSION_RE,
    bundle,
    manifest,
    read_identity,
)


@dataclass
class Record:
    checksum: str
    version: str
    manifest: str  # `<sha256>  <path>` lines, as identity.manifest writes them


def checksum(agent_dir: Path) -> str:
    return read_identity(agent_dir).checksum


def current_version(agent_dir: Path) -> str:
    try:
        return read_identity(agent_dir).version
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def read_record(agent_dir: Path) -> Record | None:
    path = agent_dir / RECORD
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    digest = lines[0].split()[0] if lines else ""
    version = next((line.split("=", 1)[1] for line in lines if line.startswith("version=")), "")
    listed = "".join(f"{line}\n" for line in lines[1:] if not line.startswith("version="))
    return Record(checksum=digest, version=version, manifest=listed)


def write_record(agent_dir: Path) -> Record:
    """First line `<checksum>  bundle` (`sha256sum` format), then the version and the manifest."""
    record = Record(
        checksum=checksum(agent_dir),
        version=current_version(agent_dir),
        manifest=manifest(agent_dir),
    )
    (agent_dir / RECORD).write_text(
        f"{record.checksum}  bundle\nversion={record.version}\n{record.manifest}"
    )
    return record


def changed_files(recorded: str, current: str) -> list[str]:
    """Paths whose line differs between two manifests: changed, added or removed files."""
    before, after = set(recorded.splitlines()), set(current.splitlines())
    return sorted({line.split("  ", 1)[-1] for line in before ^ after})


def bump(agent_dir: Path, today: str | None = None) -> Record:
    path = agent_dir / "agent.py"
    text = path.read_text()
    match = VERSION_RE.search(text)
    if match is None:
        raise SystemExit(f'{path} has no AGENT_VERSION = "X.Y.Z" line')
    major, minor, patch = (int(part) for part in match.groups())
    text = VERSION_RE.sub(f'AGENT_VERSION = "{major}.{minor}.{patch + 1}"', text, count=1)
    date = today or datetime.now(UTC).date().isoformat()
    text = BUILD_DATE_RE.sub(f'AGENT_BUILD_DATE = "{date}"', text, count=1)
    path.write_text(text)
    return write_record(agent_dir)


def check(agent_dir: Path) -> tuple[bool, str]:
    record = read_record(agent_dir)
    digest, version = checksum(agent_dir), current_version(agent_dir)
    if record is None:
        return False, f"agent/{RECORD} is missing: run `make agent-version-bump`"
    if record.checksum == digest and record.version == version:
        return True, f"agent {version} matches agent/{RECORD} ({digest})"
    if version == record.version:
        changed = ", ".join(changed_files(record.manifest, manifest(agent_dir))) or "the bundle"
        return False, (
            f"{changed} changed but AGENT_VERSION is still {version}: "
            f"run `make agent-version-bump` and commit the changes with agent/{RECORD}"
        )
    return False, (
        f"AGENT_VERSION is {version} but agent/{RECORD} records {record.version}: "
        "run `python -m agent.version_tool record`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.version_tool", description=__doc__)
    parser.add_argument("command", choices=["checksum", "bump", "record", "check", "bundle"])
    parser.add_argument("output", nargs="?", type=Path, help="bundle: the .tar.gz to write")
    parser.add_argument("--agent-dir", type=Path, default=AGENT_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    agent_dir: Path = args.agent_dir
    if args.command == "checksum":
        print(checksum(agent_dir))
    elif args.command == "bundle":
        if args.output is None:
            parser.error("bundle needs the output file, e.g. dist/agent.tar.gz")
        print(bundle(args.output, agent_dir))
    elif args.command in ("bump", "record"):
        record = bump(agent_dir) if args.command == "bump" else write_record(agent_dir)
        print(f"agent {record.version} recorded: {record.checksum}")
    else:
        ok, message = check(agent_dir)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
