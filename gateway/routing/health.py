"""Passive health: an instance that fails several requests in a row is skipped for a while.

Failures are what the proxy saw (connection refused or broken, a 5xx before the first byte, an
error event inside a stream); no probes. Ejection is per replica, like the in-flight counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.routing.registry import Backend


class PassiveHealth:
    def __init__(
        self, eject_after_failures: int, eject_s: float, on_readmitted: Callable[[str], None]
    ) -> None:
        self.eject_after_failures = eject_after_failures
        self.eject_s = eject_s
        self.on_readmitted = on_readmitted  # called with the deployment when an ejection ends

    @staticmethod
    def usable(backend: Backend, now_mono: float) -> bool:
        return backend.inflight < backend.capacity and backend.ejected_until <= now_mono

    def record_success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0

    def record_failure(self, backend: Backend) -> bool:
        """Count a failure; True when it ejected the instance."""
        backend.consecutive_failures += 1
        if backend.consecutive_failures < self.eject_after_failures:
            return False
        backend.consecutive_failures = 0
        backend.ejected_until = time.monotonic() + self.eject_s
        asyncio.get_running_loop().call_later(
            self.eject_s, self.on_readmitted, backend.info.deployment_id
        )
        return True
