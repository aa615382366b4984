"""`python -m agent`: the node agent, configured by INVENTIV_AGENT_* environment variables.

SIGTERM or SIGINT stops the HTTP server, then the engine's whole process group.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

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


def main() -> None:
    settings = AgentSettings()
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
