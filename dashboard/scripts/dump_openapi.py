"""Write the API's OpenAPI schema to a file (default: dashboard/openapi.json).

Run from anywhere with the project's Python: `.venv/bin/python dashboard/scripts/dump_openapi.py`.
The `generate` npm script runs it, then turns the schema into src/api/schema.d.ts.
No server or database is needed: the schema comes from the FastAPI app object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from core.settings import Settings  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dashboard" / "openapi.json"
    app = create_app(
        Settings(database_url="postgresql://x/y", redis_url="redis://x", temporal_address="x:1")
    )
    out.write_text(json.dumps(app.openapi(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
