"""Live events for the dashboard: appended to a capped Redis stream (so SSE clients resume with
Last-Event-ID) and announced on a channel (so every API replica pushes them at once)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from core.redis_keys import EVENTS_CHANNEL, EVENTS_STREAM

STREAM_MAXLEN = 10_000


class EventKind(StrEnum):
    """What an event is about; the dashboard picks what to refresh by it."""

    action = "action"  # a step of an instance's action log started or ended
    instance = "instance"  # an instance changed (state, addresses, creation)
    deployment = "deployment"  # a deployment was created, changed or deleted
    scaling = "scaling"  # an autoscaler decision
    reconciler = "reconciler"  # something the reconciler found and fixed


async def publish_event(
    redis: aioredis.Redis, kind: EventKind, project_id: str | None, data: dict[str, Any]
) -> str:
    """Record one event; returns its id (the stream id, usable as an SSE Last-Event-ID)."""
    payload = json.dumps({"kind": kind, "project_id": project_id, "data": data}, default=str)
    event_id = await redis.xadd(
        EVENTS_STREAM, {"event": payload}, maxlen=STREAM_MAXLEN, approximate=True
    )
    event_id = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    await redis.publish(EVENTS_CHANNEL, json.dumps({"id": event_id, "event": payload}))
    return event_id
