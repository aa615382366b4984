"""Model download and cache (placeholder while the full version lands)."""

from __future__ import annotations

from agent.settings import AgentSettings
from core.wire import ModelDownload


class ModelCache:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.progress = ModelDownload()

    async def ensure(self) -> str | None:
        return None
