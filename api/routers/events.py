"""Live events (Server-Sent Events): instance state changes, action-log lines, scaling and
deployment changes of the caller's projects.

Every API replica reads the same Redis stream (written by `core.events.publish_event`), so they
all agree; each event's SSE id is its stream id, and a reconnect with `Last-Event-ID` resumes
right after it without losing events (as long as the stream still holds them: it keeps the
last ~10,000).

An open stream re-checks its session and the caller's memberships every `sse_recheck_s`
(60 s by default): after a logout, an expiry, a password change, or the loss of a project it
covered, it sends a last `{"kind": "end"}` event and closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.access import require_project, visible_project_ids
from api.deps import RedisDep, SessionToken, SettingsDep, authenticate
from api.errors import error_responses
from core.redis_keys import EVENTS_STREAM
from core.settings import Settings

router = APIRouter(prefix="/events", tags=["events"])

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BATCH = 200
SCAN_BATCH = 1000

EVENT_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "text/event-stream. Each event: `id: <stream id>` and `data: <JSON "
            '{"kind": "state"|"action"|"deployment"|..., "project_id": "...", "data": {...}}>`; '
            "comment lines (`: keep-alive`) every few seconds. After a reconnect whose "
            "Last-Event-ID is older than what the server still keeps, the first event is "
            '`{"kind": "resync"}` (without id): reload the data shown. When the session ends or '
            'the caller loses access to a project, a last `{"kind": "end"}` event (without id) '
            "comes before the stream closes."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **error_responses(400, 401, 404),
}


class EventPublic(BaseModel):
    id: str = Field(description="stream id (also the SSE event id)")
    at: datetime
    kind: str
    project_id: str | None
    data: dict[str, Any]


async def recent_events(
    redis: aioredis.Redis, keep: Callable[[dict[str, Any]], bool], limit: int
) -> list[EventPublic]:
    """The newest events (newest first) that `keep` accepts, from what the stream still holds."""
    found: list[EventPublic] = []
    upper = "+"
    while len(found) < limit:
        entries: Any = await redis.xrevrange(EVENTS_STREAM, max=upper, count=SCAN_BATCH)
        for event_id, fields in entries:
            try:
                event = json.loads(fields.get("event", "{}"))
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("data"), dict) and keep(event):
                millis = int(str(event_id).split("-")[0])
                found.append(
                    EventPublic(
                        id=event_id,
                        at=datetime.fromtimestamp(millis / 1000, UTC),
                        kind=str(event.get("kind")),
                        project_id=event.get("project_id"),
                        data=event["data"],
                    )
                )
                if len(found) == limit:
                    break
        if len(entries) < SCAN_BATCH:
            break
        upper = "(" + str(entries[-1][0])
    return found


RESYNC = json.dumps(
    {
        "kind": "resync",
        "project_id": None,
        "data": {"reason": "some events since Last-Event-ID are no longer kept: reload"},
    }
)


def end_event(reason: str) -> str:
    payload = json.dumps({"kind": "end", "project_id": None, "data": {"reason": reason}})
    return f"data: {payload}\n\n"


async def _access_now(
    request: Request,
    redis: aioredis.Redis,
    settings: Settings,
    token: str | None,
    project_id: uuid.UUID | None,
) -> set[str] | None:
    """The projects the session may follow now (None: all); HTTPException once it may not."""
    async with request.app.state.sessionmaker() as session:
        user = await authenticate(session, redis, settings, token)
        if project_id is not None:
            await require_project(session, user, project_id)
        visible = await visible_project_ids(session, user)
    return None if visible is None else {str(p) for p in visible}


def _order(stream_id: str) -> tuple[int, int]:
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)


def format_event(event_id: str, payload: str) -> str:
    return f"id: {event_id}\ndata: {payload}\n\n"


@router.get("", response_class=StreamingResponse, responses=EVENT_STREAM_RESPONSE)
async def stream_events(
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    token: SessionToken,
    project_id: uuid.UUID | None = Query(default=None, description="only this project"),
    last_event_id: str | None = Header(
        default=None, description="resume after this event (browsers send it on reconnect)"
    ),
) -> StreamingResponse:
    """Live events of the caller's projects, oldest first; follow with an EventSource."""
    if last_event_id is not None and not _STREAM_ID.match(last_event_id.strip()):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an event id like 1700000000000-0"
        )
    # A short database session: the stream may stay open for hours.
    allowed = await _access_now(request, redis, settings, token, project_id)
    wanted = str(project_id) if project_id is not None else None
    gap = False
    if last_event_id is not None:
        start = last_event_id.strip()
        oldest: Any = await redis.xrange(EVENTS_STREAM, count=1)
        gap = bool(oldest) and _order(str(oldest[0][0])) > _order(start)
    else:
        newest = await redis.xrevrange(EVENTS_STREAM, count=1)
        start = str(newest[0][0]) if newest else "0-0"
    keepalive_ms = int(min(request.app.state.sse_keepalive_s, settings.sse_recheck_s) * 1000)

    async def events() -> AsyncIterator[str]:
        nonlocal allowed
        last = start
        checked = time.monotonic()
        yield "retry: 2000\n\n"
        if gap:  # the stream no longer holds everything after Last-Event-ID
            yield f"data: {RESYNC}\n\n"
        while True:
            if time.monotonic() - checked >= settings.sse_recheck_s:
                checked = time.monotonic()
                try:
                    now_allowed = await _access_now(request, redis, settings, token, project_id)
                except HTTPException as exc:
                    yield end_event(str(exc.detail))
                    return
                if now_allowed is not None and (allowed is None or not allowed <= now_allowed):
                    yield end_event("your project memberships changed: reconnect")
                    return
                allowed = now_allowed
            try:
                batch: Any = await redis.xread(
                    {EVENTS_STREAM: last}, count=BATCH, block=keepalive_ms
                )
            except (RedisConnectionError, RedisTimeoutError):
                # Redis is down: the stream stays open and goes on after `last` once it is back.
                yield ": redis unavailable, retrying\n\n"
                await asyncio.sleep(settings.outage_retry_after_s)
                continue
            if not batch:
                yield ": keep-alive\n\n"
                continue
            for _stream, entries in batch:
                for event_id, fields in entries:
                    last = event_id
                    payload = fields.get("event", "{}")
                    try:
                        owner = json.loads(payload).get("project_id")
                    except ValueError:
                        continue
                    if wanted is not None and owner != wanted:
                        continue
                    if allowed is None or owner in allowed:
                        yield format_event(event_id, payload)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
