"""Access that ends: the API keys a person created stop working when they lose access to the
project (removed, disabled, deleted), unless an admin reassigned them first
(POST /api/v1/keys/reassign). Gateways hear of each revoked key on API_KEY_CHANNEL and drop it
from their cache at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import ApiKey, utcnow
from core.redis_keys import API_KEY_CHANNEL


async def revoke_keys_created_by(
    session: AsyncSession, user_id: uuid.UUID, project_ids: Iterable[uuid.UUID] | None = None
) -> list[str]:
    """Mark the user's live keys (in those projects; all when None) revoked, in the caller's
    transaction. Returns their hashes: announce them with `announce_revoked` after the commit."""
    query = select(ApiKey).where(ApiKey.created_by == user_id, col(ApiKey.revoked_at).is_(None))
    if project_ids is not None:
        query = query.where(col(ApiKey.project_id).in_(list(project_ids)))
    keys = (await session.exec(query)).all()
    now = utcnow()
    for key in keys:
        key.revoked_at = now
        session.add(key)
    return [key.key_hash for key in keys]


async def announce_revoked(redis: aioredis.Redis, key_hashes: Iterable[str]) -> None:
    for key_hash in key_hashes:
        await redis.publish(API_KEY_CHANNEL, key_hash)
