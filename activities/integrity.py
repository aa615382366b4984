"""Agent integrity: is the agent a machine runs the one this control plane ships?

One rule for the boot-time health check and for every heartbeat, so they never disagree. The
bundled agent's identity is read as data (agent/identity.py), never by importing the agent.
"""

from __future__ import annotations

from agent.identity import bundled_agent
from core.settings import Settings


def expected_agent(settings: Settings) -> tuple[str, str]:
    """(version, checksum) required: settings.expected_agent_version or the bundled agent's
    version, and always the bundled agent's checksum."""
    bundled = bundled_agent()
    return settings.expected_agent_version or bundled.version, bundled.checksum


def agent_integrity_ok(version: str | None, checksum: str | None, settings: Settings) -> bool:
    return (version, checksum) == expected_agent(settings)
