"""The gateway's ASGI app as a zero-argument factory, for ASGI servers started from their own
command line (the benchmark's granian target: `granian --interface asgi --factory
bench.gateway.asgi_app:create`). Settings come from the environment, as for `python -m gateway`;
the app starts and stops its connections and background loops through ASGI lifespan."""

from __future__ import annotations

from core.settings import Settings
from gateway.app import Gateway, create_app
from gateway.settings import GatewaySettings


def create() -> Gateway:
    return create_app(Settings(), GatewaySettings())
