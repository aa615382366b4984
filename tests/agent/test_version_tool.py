"""`agent-version-check` fails on a changed agent without a bump and passes after the bump."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.version_tool import check, checksum, current_version
from tests.agent.helpers import REPO_ROOT


def version_tool(agent_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.version_tool", *args, "--agent-dir", str(agent_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_committed_record_matches_the_agent() -> None:
    ok, message = check(REPO_ROOT / "agent")
    assert ok, message


def test_a_change_without_a_bump_fails_the_check_until_bumped(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "agent" / "agent.py", tmp_path / "agent.py")
    shutil.copy(REPO_ROOT / "agent" / "agent.sha256", tmp_path / "agent.sha256")
    assert version_tool(tmp_path, "check").returncode == 0
    printed = version_tool(tmp_path, "checksum").stdout.strip()
    assert printed == checksum(tmp_path) == checksum(REPO_ROOT / "agent")

    before = current_version(tmp_path)
    with (tmp_path / "agent.py").open("a") as source:
        source.write("\n# a change\n")
    failed = version_tool(tmp_path, "check")
    assert failed.returncode == 1
    assert f"changed but AGENT_VERSION is still {before}" in failed.stderr

    assert version_tool(tmp_path, "bump").returncode == 0
    major, minor, patch = before.split(".")
    assert current_version(tmp_path) == f"{major}.{minor}.{int(patch) + 1}"
    today = datetime.now(UTC).date().isoformat()
    assert f'AGENT_BUILD_DATE = "{today}"' in (tmp_path / "agent.py").read_text()
    passed = version_tool(tmp_path, "check")
    assert passed.returncode == 0, passed.stderr
    assert (tmp_path / "agent.sha256").read_text().startswith(checksum(tmp_path) + "  agent.py")
