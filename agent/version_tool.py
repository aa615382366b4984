"""Agent version tooling: `python -m agent.version_tool checksum|bump|record|check|bundle FILE`.

`agent/agent.sha256` records the SHA-256 of `agent/agent.py` and the version it was recorded
for. `check` fails when the file no longer matches the record, so a change to the agent cannot
ship under the old version: `bump` raises the patch version and build date, then records.
`bundle` packs what a worker machine needs (agent/ and core/wire.py) for bootstrap.sh.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.identity import AGENT_DIR, BUILD_DATE_RE, VERSION_RE, bundle, read_identity


@dataclass
class Record:
    checksum: str
    version: str


def checksum(agent_dir: Path) -> str:
    return read_identity(agent_dir).checksum


def current_version(agent_dir: Path) -> str:
    try:
        return read_identity(agent_dir).version
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def read_record(agent_dir: Path) -> Record | None:
    path = agent_dir / "agent.sha256"
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    digest = lines[0].split()[0] if lines else ""
    version = next((line.split("=", 1)[1] for line in lines if line.startswith("version=")), "")
    return Record(checksum=digest, version=version)


def write_record(agent_dir: Path) -> Record:
    """First line in `sha256sum` format, so `sha256sum -c` style tools and bootstrap.sh read it."""
    record = Record(checksum=checksum(agent_dir), version=current_version(agent_dir))
    (agent_dir / "agent.sha256").write_text(
        f"{record.checksum}  agent.py\nversion={record.version}\n"
    )
    return record


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
        return False, "agent/agent.sha256 is missing: run `make agent-version-bump`"
    if record.checksum == digest and record.version == version:
        return True, f"agent {version} matches agent/agent.sha256 ({digest})"
    if version == record.version:
        return False, (
            f"agent/agent.py changed but AGENT_VERSION is still {version}: "
            "run `make agent-version-bump` and commit agent/agent.py with agent/agent.sha256"
        )
    return False, (
        f"AGENT_VERSION is {version} but agent/agent.sha256 records {record.version}: "
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
