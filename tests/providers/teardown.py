"""Deleting a machine as the lifecycle workflow does: `delete`, then `confirm_gone`, retried while
the provider says "not yet gone", each call returning promptly."""

from __future__ import annotations

import asyncio
import time

from activities.providers.base import Compute, ResourceNotYetGoneError

PROMPT_S = 5.0  # longest one delete call may take (it never waits for the machine to go)


async def delete_until_gone(compute: Compute, resource_id: str, attempts: int = 100) -> int:
    """Delete and confirm, retrying `ResourceNotYetGoneError`; returns the number of tries."""
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            await compute.delete(resource_id)
            await compute.confirm_gone(resource_id)
            return attempt
        except ResourceNotYetGoneError:
            await asyncio.sleep(0.05)
        finally:
            took = time.monotonic() - started
            assert took < PROMPT_S, f"delete took {took:.1f}s: it must not wait for the machine"
    raise AssertionError(f"{compute.kind} machine {resource_id} still there after {attempts} tries")
