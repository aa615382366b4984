"""The registry: an adapter is on only with its SDK and credentials, the reason it is off is logged
(never a credential), and each entry matches the adapter it names."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from activities.providers.aws.settings import AWSSettings
from activities.providers.base import Compute, capabilities_of
from activities.providers.registry import PROVIDERS, build_providers, check_kind
from activities.providers.scaleway.settings import ScalewaySettings
from activities.providers.ssh.settings import SSHSettings
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_only_configured_providers_are_enabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/db")
    secret_scw, secret_aws = str(uuid.uuid4()), "aws-secret-" + uuid.uuid4().hex
    with caplog.at_level(logging.INFO, logger="activities.providers.registry"):
        bare = build_providers(
            settings,
            {"scaleway": ScalewaySettings(), "aws": AWSSettings(), "ssh": SSHSettings()},
        )
        full = build_providers(
            settings,
            {
                "scaleway": ScalewaySettings(
                    access_key="SCWXXXXXXXXXXXXXXXXX",
                    secret_key=secret_scw,
                    project_id=str(uuid.uuid4()),
                ),
                "aws": AWSSettings(access_key_id="AKIAEXAMPLE", secret_access_key=secret_aws),
                "ssh": SSHSettings(enabled=True),
            },
        )
        broken = build_providers(
            settings,
            {
                "scaleway": ScalewaySettings(
                    access_key="SCWXXXXXXXXXXXXXXXXX",
                    secret_key="not-a-uuid-" + secret_aws,
                    project_id=str(uuid.uuid4()),
                ),
                "aws": AWSSettings(),
                "ssh": SSHSettings(),
            },
        )
    assert sorted(bare) == ["local"]
    assert sorted(full) == ["aws", "local", "scaleway", "ssh"]
    assert sorted(broken) == ["local"]
    assert "providers enabled: aws, local, scaleway, ssh" in caplog.text
    assert (
        "provider aws disabled: INVENTIV_AWS_ACCESS_KEY_ID or _SECRET_ACCESS_KEY unset"
        in caplog.text
    )
    assert "provider scaleway disabled: malformed Scaleway settings" in caplog.text
    assert "provider ssh disabled: INVENTIV_SSH_ENABLED is not true" in caplog.text
    assert secret_scw not in caplog.text and secret_aws not in caplog.text
    for adapters in (bare, full):
        for adapter in adapters.values():
            assert adapter.kind in PROVIDERS


@pytest.mark.parametrize("kind", list(PROVIDERS))
def test_each_entry_matches_its_adapter(kind: str) -> None:
    """The factory names a `Compute` of that kind whose mixins are the declared capabilities, and
    the static catalogue the API serves is the adapter's own."""
    spec = PROVIDERS[kind]
    adapter = spec.adapter_class()
    assert issubclass(adapter, Compute) and adapter.kind == kind
    assert capabilities_of(adapter) == frozenset(spec.capabilities)
    assert spec.offers(), "a provider offers at least one instance type"
    assert spec.settings.model_config.get("env_prefix", "").startswith("INVENTIV_")


def test_unknown_kinds_are_refused() -> None:
    assert check_kind("aws") == "aws"
    with pytest.raises(ValueError, match="unknown provider kind 'gcp'; known: local, scaleway"):
        check_kind("gcp")


# A blocker on sys.meta_path: these SDKs cannot be imported, as if they were not installed.
_BLOCK_SDKS = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""

_BUILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from activities.providers.registry import PROVIDERS, build_providers
from core.settings import Settings
print("built:", ",".join(sorted(build_providers(Settings(database_url="postgresql://u@h/db")))))
print("aws catalogue:", len(PROVIDERS["aws"].offers()))
"""


def test_a_missing_sdk_turns_its_provider_off_with_a_reason(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "INVENTIV_DATA_DIR": str(tmp_path),
        "INVENTIV_AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "INVENTIV_AWS_SECRET_ACCESS_KEY": "aws-secret-" + uuid.uuid4().hex,
        "INVENTIV_SSH_ENABLED": "true",
    }
    script = _BLOCK_SDKS.format(blocked={"boto3", "botocore", "asyncssh"}) + _BUILD
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "provider aws disabled: its SDK (boto3) is not installed" in run.stdout
    assert "provider ssh disabled: its SDK (asyncssh) is not installed" in run.stdout
    assert "built: local\n" in run.stdout
    assert "aws catalogue: 6" in run.stdout  # the catalogue needs no SDK
    assert env["INVENTIV_AWS_SECRET_ACCESS_KEY"] not in run.stdout + run.stderr


CLOUD_SDKS = {"boto3", "botocore", "scaleway", "scaleway_core", "asyncssh", "mypy_boto3_ec2"}


def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports run when the module is imported (not those inside a function)."""
    found: list[tuple[int, str]] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.If | ast.Try):
            pending.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            pending.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
    return found


def test_only_adapters_import_their_sdk() -> None:
    """A cloud SDK is imported at module level by its provider's adapter.py and nowhere else in
    the product: importing anything else (the registry, a catalogue, the API) never needs it."""
    offenders = []
    for package in ("activities", "api", "core", "gateway", "inventiv", "workers", "workflows"):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative.parts[:2] == ("activities", "providers") and path.name == "adapter.py":
                continue
            for line, name in _module_level_imports(ast.parse(path.read_text())):
                if name.partition(".")[0] in CLOUD_SDKS:
                    offenders.append(f"{relative}:{line} imports {name}")
    assert offenders == []
