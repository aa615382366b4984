"""The agent's side of control-plane pinning, without a control plane: what `--pin` accepts, and
a saved state that pins a key never going out in clear (tests/tunnel/test_tunnel_pinning.py has
the real TLS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.tunnel import STATE_FILE, JoinRefusedError, MachineState, join, parse_pins
from tests.agent.helpers import REPO_ROOT

PIN = "sha256:" + "ab" * 32


def _agent(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_pins_are_checked_and_normalised() -> None:
    assert parse_pins([PIN.upper().replace("SHA256", "sha256"), PIN]) == [PIN]
    for bad in ("", "sha256:", "sha256:" + "ab" * 31, "sha256:" + "zz" * 32, "ab" * 32):
        with pytest.raises(ValueError, match="sha256:<64 hex digits>"):
            parse_pins([bad])


def test_a_state_saved_before_pinning_loads_unpinned(tmp_path: Path) -> None:
    state = MachineState(
        machine_id="m", credential="imc_x", credential_expires_at="2030-01-01T00:00:00+00:00",
        tunnel_url="ws://127.0.0.1:1", private_key=Ed25519PrivateKey.generate()
        .private_bytes_raw().hex(),
    )  # fmt: skip
    state.save(tmp_path)
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    del saved["pins"]
    (tmp_path / STATE_FILE).write_text(json.dumps(saved))
    assert MachineState.load(tmp_path).pins == []


def test_a_pinned_join_sends_nothing_in_clear(tmp_path: Path) -> None:
    with pytest.raises(JoinRefusedError, match="pinning needs https://"):
        join("http://127.0.0.1:1", "ime_secret", tmp_path, pins=[PIN])
    assert not (tmp_path / STATE_FILE).exists()


def test_connect_pin_replaces_the_saved_pins_and_a_clear_tunnel_is_refused(
    tmp_path: Path,
) -> None:
    state = MachineState(
        machine_id="m", credential="imc_x", credential_expires_at="2030-01-01T00:00:00+00:00",
        tunnel_url="ws://127.0.0.1:1", private_key=Ed25519PrivateKey.generate()
        .private_bytes_raw().hex(), pins=["sha256:" + "00" * 32],
    )  # fmt: skip
    state.save(tmp_path)
    malformed = _agent(tmp_path, "connect", "--pin", "sha256:nope")
    assert malformed.returncode == 2 and "--pin refused" in malformed.stderr
    assert MachineState.load(tmp_path).pins == ["sha256:" + "00" * 32]
    replaced = _agent(tmp_path, "connect", "--pin", PIN)
    assert MachineState.load(tmp_path).pins == [PIN]
    # the saved tunnel URL is plain ws://: with a pin, the credential is not sent there
    assert replaced.returncode == 2
    assert "not TLS but the control plane's key is pinned" in replaced.stderr
