"""The import rules of docs/architecture.md, enforced.

Two checks: a static one over every import statement in the source tree (module level or inside a
function: a lazy import is still a dependency), and a run-time one that imports each service in a
fresh interpreter and looks at what it loaded. The checker is a plain function over a folder, so
the last tests plant a forbidden import in a copy of the tree and see it reported.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "core", "agent", "activities", "workflows", "workers", "gateway", "api", "tunnel", "inventiv"
)  # fmt: skip

# What each package may import of ours, by module prefix ("core" allows core and core.*).
# A package may always import itself. inventiv/ composes everything, so it has no rule.
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": (),
    # The agent ships alone to GPU machines: only the wire types travel with it.
    "agent": ("core.wire",),
    # Activities do the I/O; they never import workflows (the worker injects the few workflow
    # starts they need) nor any service.
    "activities": ("core", "agent.identity"),
    # Workflows see activity classes and contracts (method references), never a service.
    "workflows": ("core", "activities"),
    "workers": ("core", "activities", "workflows"),
    # The data plane stands alone on core.
    "gateway": ("core",),
    # The API starts workflows through their client, reads providers through the registry, and
    # reads the agent's identity as data.
    "api": (
        "core",
        "workflows.client",
        "workflows.contracts",
        "activities.contracts",
        "activities.providers.registry",
        "activities.providers.flavors",
        "activities.providers.base",
        # The bare-metal hosts API: the SSH provider's static parts (never its adapter).
        "activities.providers.ssh.catalogue",
        "activities.providers.ssh.keys",
        "activities.providers.ssh.settings",
        # Machine enrolment answers with the tunnel's public URL.
        "activities.providers.tunnel.settings",
        "agent.identity",
    ),
    # The tunnel endpoint: core, its settings, and the drain command it is handed.
    "tunnel": ("core", "activities.providers.tunnel.settings"),
}

# Third-party modules a service must not load when it is imported: cloud SDKs (the provider
# registry loads them lazily, in the worker) and the agent's server.
FORBIDDEN_AT_IMPORT = {
    "api.app": ("boto3", "botocore", "scaleway", "scaleway_core", "asyncssh", "agent.agent"),
    "gateway.app": (
        "boto3",
        "botocore",
        "scaleway",
        "scaleway_core",
        "asyncssh",
        "agent.agent",
        "temporalio",
        "fastapi",
    ),
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.imported}"


def _allowed(package: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in PACKAGES or top == package or package not in ALLOWED:
        return True
    return any(module == p or module.startswith(p + ".") for p in ALLOWED[package])


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from core import states` imports core.states: check the full name.
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def violations(root: Path) -> list[Violation]:
    """Every import in `root`'s packages that the rules above forbid."""
    found: list[Violation] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name in _imports(tree):
                # `from core.models import Instance`: the module is core.models; accept either
                # the module or the module.name spelling being allowed.
                module = name.rsplit(".", 1)[0] if "." in name else name
                if not (_allowed(package, name) or _allowed(package, module)):
                    found.append(Violation(str(path.relative_to(root)), line, name))
    return found


def test_no_forbidden_import_in_the_tree() -> None:
    assert [str(v) for v in violations(ROOT)] == []


@pytest.mark.parametrize("service", sorted(FORBIDDEN_AT_IMPORT))
def test_service_loads_no_cloud_sdk_or_agent_server_at_import(service: str) -> None:
    probe = f"import json, sys, {service}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert [m for m in FORBIDDEN_AT_IMPORT[service] if m in loaded] == []


def _copy_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("sim"))
    return tmp_path


@pytest.mark.parametrize(
    ("file", "statement", "imported"),
    [
        ("activities/_planted.py", "from workflows.instance import InstanceWorkflow", "workflows"),
        ("gateway/_planted.py", "import activities.providers.aws", "activities"),
        ("api/_planted.py", "from agent.agent import app", "agent.agent"),
        ("agent/_planted.py", "def f():\n    from core.models import Instance", "core.models"),
        ("core/_planted.py", "from api.deps import SessionDep", "api.deps"),
    ],
)
def test_a_planted_forbidden_import_is_reported(
    tmp_path: Path, file: str, statement: str, imported: str
) -> None:
    root = _copy_tree(tmp_path)
    before = set(violations(root))
    (root / file).write_text(statement + "\n")
    reported = [v for v in violations(root) if v not in before]
    assert [v.file for v in reported] == [file]
    assert reported[0].imported.startswith(imported)
