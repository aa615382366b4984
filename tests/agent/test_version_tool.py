"""`agent-version-check` fails when any bundled file changed without a bump, and passes after."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent.identity import CORE_FILES
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


def copy_of_the_bundle_sources(root: Path) -> Path:
    """agent/ (with its record) and the core files it ships with, as in the repository."""
    shutil.copytree(
        REPO_ROOT / "agent", root / "agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in CORE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, root / name)
    return root / "agent"


def test_a_change_without_a_bump_fails_the_check_until_bumped(tmp_path: Path) -> None:
    agent_dir = copy_of_the_bundle_sources(tmp_path)
    assert version_tool(agent_dir, "check").returncode == 0
    printed = version_tool(agent_dir, "checksum").stdout.strip()
    assert printed == checksum(agent_dir) == checksum(REPO_ROOT / "agent")

    before = current_version(agent_dir)
    with (agent_dir / "supervisor.py").open("a") as source:
        source.write("\n# a change\n")
    failed = version_tool(agent_dir, "check")
    assert failed.returncode == 1
    assert f"agent/supervisor.py changed but AGENT_VERSION is still {before}" in failed.stderr

    assert version_tool(agent_dir, "bump").returncode == 0
    major, minor, patch = before.split(".")
    assert current_version(agent_dir) == f"{major}.{minor}.{int(patch) + 1}"
    today = datetime.now(UTC).date().isoformat()
    assert f'AGENT_BUILD_DATE = "{today}"' in (agent_dir / "agent.py").read_text()
    passed = version_tool(agent_dir, "check")
    assert passed.returncode == 0, passed.stderr
    assert (agent_dir / "agent.sha256").read_text().startswith(checksum(agent_dir) + "  bundle")


def test_core_wire_added_and_removed_files_need_a_bump_too(tmp_path: Path) -> None:
    changes: dict[str, Callable[[Path], object]] = {
        "core/wire.py": lambda root: (root / "core" / "wire.py").write_text("# replaced\n"),
        "agent/extra.py": lambda root: (root / "agent" / "extra.py").write_text("x = 1\n"),
        "agent/gpu.py": lambda root: (root / "agent" / "gpu.py").unlink(),
    }
    for name, change in changes.items():
        root = tmp_path / name.replace("/", "-")
        agent_dir = copy_of_the_bundle_sources(root)
        change(root)
        ok, message = check(agent_dir)
        assert not ok and message.startswith(f"{name} changed but AGENT_VERSION"), message
