"""The README is the front door: its commands and settings must be the real ones."""

from __future__ import annotations

from pathlib import Path

from inventiv.settings_doc import render

ROOT = Path(__file__).resolve().parents[1]


def test_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render() in readme, "regenerate: python -m inventiv.settings_doc --write README.md"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make dev" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
