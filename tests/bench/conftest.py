"""The gateway's fixtures, for the load script's tests (a real gateway and test engines)."""

from tests.gateway.conftest import (  # noqa: F401  (fixtures the bench tests reuse)
    engines,
    gateway,
    gateway_server,
    gateway_settings,
    registry,
    seeded,
    start_gateway,
)
