"""Which provider adapters are enabled: an adapter is on only when its SDK and credentials exist."""

from __future__ import annotations

import logging

from activities.providers.base import Compute
from activities.providers.local import LocalCompute
from core.settings import Settings

log = logging.getLogger(__name__)


def build_providers(settings: Settings) -> dict[str, Compute]:
    """Adapters by provider kind. Logs which are enabled (never their credentials)."""
    providers: dict[str, Compute] = {"local": LocalCompute(settings)}
    log.info("providers enabled: %s", ", ".join(sorted(providers)))
    return providers
