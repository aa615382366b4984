"""API keys: looked up by SHA-256 in PostgreSQL once, then served from memory.

The API publishes a key's hash on API_KEY_CHANNEL when it is revoked or its limits change; every
replica drops it at once (and clears everything after a pub/sub reconnect, since messages may have
been missed). `last_used_at` is written in batches, off the hot path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from core.tokens import token_hash
from gateway import sql
from gateway.errors import invalid_key, unavailable, warn_at_most_every


@dataclass(slots=True, frozen=True)
class KeyInfo:
    id: str
    project_id: str
    rpm_limit: int | None
    tpm_limit: int | None

    @property
    def limited(self) -> bool:
        return self.rpm_limit is not None or self.tpm_limit is not None


class KeyCache:
    def __init__(self, pool: asyncpg.Pool, ttl_s: float, unknown_ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.unknown_ttl_s = unknown_ttl_s
        # key hash -> (key, or None when unknown; expiry). Secrets are never kept, even in memory.
        self._by_hash: dict[str, tuple[KeyInfo | None, float]] = {}
        self._loading: dict[str, asyncio.Future[KeyInfo | None]] = {}
        self._used: set[str] = set()
        # Bumped by every invalidation: a lookup that raced with one is not cached.
        self._generation = 0

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> KeyInfo:
        """The key of a request's `Authorization: Bearer` header: 401 when missing or unknown,
        503 when it cannot be checked (database down)."""
        secret = ""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    secret = token.strip()
                break
        if not secret:
            raise invalid_key()
        try:
            key = await self.lookup(secret)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            warn_at_most_every(10, "keys", "API key lookup failed: %s", exc)
            raise unavailable("Key verification is unavailable; retry shortly.", 2) from exc
        if key is None:
            raise invalid_key()
        return key

    async def lookup(self, secret: str) -> KeyInfo | None:
        digest = token_hash(secret)
        entry = self._by_hash.get(digest)
        if entry is not None and entry[1] > time.monotonic():
            if entry[0] is not None:
                self._used.add(entry[0].id)
            return entry[0]
        pending = self._loading.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyInfo | None] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            info = await self._load(digest)
            future.set_result(info)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._loading[digest]
        if info is not None:
            self._used.add(info.id)
        return info

    async def _load(self, digest: str) -> KeyInfo | None:
        generation = self._generation
        row = await self.pool.fetchrow(sql.API_KEY_BY_HASH, digest)
        info = (
            None
            if row is None
            else KeyInfo(
                id=str(row["id"]),
                project_id=str(row["project_id"]),
                rpm_limit=row["rpm_limit"],
                tpm_limit=row["tpm_limit"],
            )
        )
        ttl = self.ttl_s if info is not None else self.unknown_ttl_s
        if generation != self._generation:
            return info
        if len(self._by_hash) > 100_000:
            self._by_hash.clear()  # bounded memory under a flood of random keys
        self._by_hash[digest] = (info, time.monotonic() + ttl)
        return info

    def invalidate(self, key_hash: str) -> None:
        self._generation += 1
        self._by_hash.pop(key_hash, None)

    def invalidate_all(self) -> None:
        self._generation += 1
        self._by_hash.clear()

    async def flush_last_used(self) -> None:
        if not self._used:
            return
        # As strings: asyncpg encodes them to uuid in C (a UUID object each cost 3 % of the
        # gateway's CPU with 10,000 keys in use).
        ids = list(self._used)
        self._used = set()
        await self.pool.execute(sql.TOUCH_API_KEYS, ids)
