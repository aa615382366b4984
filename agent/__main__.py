"""`python -m agent`: the node agent, configured by INVENTIV_AGENT_* environment variables.

SIGTERM or SIGINT stops the HTTP server, then the engine's whole process group.
`python -m agent join ...` / `connect`: a machine behind NAT, over the outbound tunnel
(agent/tunnel.py), with no HTTP server at all.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from agent.agent import create_app
from agent.settings import AgentSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: AgentSettings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def load_settings() -> AgentSettings:
    """The settings, or exit naming the variable to fix (never echoing a value: secrets)."""
    try:
        return AgentSettings()
    except SettingsError as exc:
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        sys.exit(f"bad INVENTIV_AGENT_{field.upper()}: not valid JSON")
    except ValidationError as exc:
        problems = "; ".join(
            f"INVENTIV_AGENT_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"bad agent settings: {problems}")


def main() -> None:
    if sys.argv[1:2] in (["join"], ["connect"]):
        from agent.tunnel import main as tunnel_main

        sys.exit(tunnel_main(sys.argv[1:]))
    settings = load_settings()
    configure_logging(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
