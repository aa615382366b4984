"""Live events for the dashboard: appended to a capped Redis stream (so SSE clients resume with
Last-Event-ID) and announced on a channel (so every API replica pushes them at once).

Events are best-effort: while Redis is down or hung, publishing logs a warning and returns after
at most `PUBLISH_TIMEOUT_S`; the request or activity that published goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.redis_keys import EVENTS_CHANNEL, EVENTS_STREAM

STREAM_MAXLEN = 10_000
PUBLISH_TIMEOUT_S = 2.0
log = logging.getLogger(__name__)


class EventKind(StrEnum):
    """What an event is about; the dashboard picks what to refresh by it."""

    action = "action"  # a step of an instance's action log started or ended
    instance = "instance"  # an instance changed (state, addresses, creation)
    deployment = "deployment"  # a deployment was created, changed or deleted
    scaling = "scaling"  # an autoscaler decision
    reconciler = "reconciler"  # something the reconciler found and fixed
    attention = "attention"  # an instance's cleanup keeps failing (or no longer does)


async def publish_event(
    redis: aioredis.Redis, kind: EventKind, project_id: str | None, data: dict[str, Any]
) -> str | None:
    """Record one event; returns its id (the stream id, usable as an SSE Last-Event-ID), or None
    when Redis did not take it (down, or no answer within PUBLISH_TIMEOUT_S)."""
    payload = json.dumps({"kind": kind, "project_id": project_id, "data": data}, default=str)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            event_id = await redis.xadd(
                EVENTS_STREAM, {"event": payload}, maxlen=STREAM_MAXLEN, approximate=True
            )
            event_id = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
            await redis.publish(EVENTS_CHANNEL, json.dumps({"id": event_id, "event": payload}))
    except (RedisError, TimeoutError) as exc:
        log.warning("event %s of project %s not published: %r", kind, project_id, exc)
        return None
    return event_id
