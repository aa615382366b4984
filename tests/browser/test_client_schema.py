"""The dashboard's generated client against the API as it is now: every call the dashboard
makes names a path and method the API serves, so a renamed or removed endpoint fails here
(and `npm run build` type-checks the bodies against the committed schema)."""

from __future__ import annotations

import re
from pathlib import Path

from api.app import create_app
from core.settings import Settings

SRC = Path(__file__).resolve().parents[2] / "dashboard" / "src"
CALL = re.compile(r'client\.(GET|POST|PUT|PATCH|DELETE)\(\s*"(/api/v1/[^"]+)"')
SSE = "/api/v1/events"


def dashboard_calls() -> set[tuple[str, str]]:
    calls = set()
    for source in SRC.rglob("*.ts*"):
        for method, path in CALL.findall(source.read_text()):
            calls.add((method.lower(), path))
    return calls


def test_every_call_of_the_dashboard_exists_in_the_api() -> None:
    app = create_app(
        Settings(
            database_url="postgresql://x/y",
            redis_url="redis://x",
            temporal_address="x:1",
            secret_key="schema-only",
        )
    )
    paths = app.openapi()["paths"]
    calls = dashboard_calls()
    assert len(calls) > 30, "the dashboard's calls were not found: did the client move?"
    missing = sorted(f"{m.upper()} {p}" for m, p in calls if m not in paths.get(p, {}))
    assert not missing, f"the dashboard calls endpoints the API does not serve: {missing}"
    assert "get" in paths.get(SSE, {}), "the dashboard follows live events at GET /api/v1/events"
