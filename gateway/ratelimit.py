"""Per-key rate limits shared by every gateway replica: one Lua script, one Redis round trip.

Requests per minute use a sliding-window log (a sorted set of admission times): in any 60 s,
at most N requests pass, whichever replica admitted them, so the limit is exact, unlike
per-replica counters. Tokens per minute use per-second buckets summed over the last 60 s. A
request reserves its `max_tokens` (a default when absent, at most the limit) in the same atomic
call that admits it, and only if the reservation fits; once it ends, the reservation is settled
to the tokens really used (its bucket corrected by the difference). So concurrent requests
cannot pass the limit together, whichever replica admits them. Times come from the Redis
server's clock, so replicas with skewed clocks agree.

Leases keep Redis off most requests of busy keys: a replica that sees a key's traffic reserves
up to `MAX_LEASE` slots of its request window at once (as many admission entries, so every other
replica counts them) and hands them out locally for `LEASE_S`; slots still unused then are given
back. Near the limit (less than four leases' worth left) the script grants one slot per call, so
the count stays exact where it matters: a key limited to N per minute gets N, not fewer, and
never more than N + 1 (a slot is timestamped when leased, at most LEASE_S before its use).
A key with a token limit leases a token budget with its slots (each request takes its own
reservation from it) on the same terms: far from the limit only, given back when unused.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from core.redis_keys import rate_limit_key
from gateway.protocols.resp import PipelinedRedis

WINDOW_S = 60
LEASE_S = 0.25  # how long leased request slots stay with this replica
MAX_LEASE = 256  # request slots leased at once, at most

_ADMIT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[4]) * 1000
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local used_req = 0
local req_reset_ms = 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
  used_req = redis.call('ZCARD', KEYS[1])
  if used_req > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    req_reset_ms = tonumber(oldest[2]) + window_ms - now_ms
  end
  if used_req >= rpm then
    return {0, 1, used_req, 0, req_reset_ms, 0, 0, 0}
  end
end
local used_tok = 0
local tok_reset_ms = 0
if tpm >= 0 then
  local now_s = math.floor(now_ms / 1000)
  local oldest_s = nil
  local buckets = redis.call('HGETALL', KEYS[2])
  for i = 1, #buckets, 2 do
    local second = tonumber(buckets[i])
    if second <= now_s - tonumber(ARGV[4]) then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      used_tok = used_tok + tonumber(buckets[i + 1])
      if oldest_s == nil or second < oldest_s then oldest_s = second end
    end
  end
  if oldest_s ~= nil then
    tok_reset_ms = (oldest_s + tonumber(ARGV[4])) * 1000 - now_ms
  end
  if used_tok + tonumber(ARGV[6]) > tpm then
    return {0, 2, used_req, used_tok, tok_reset_ms, 0, 0, 0}
  end
end
local grant = 0
if rpm >= 0 then
  local want = tonumber(ARGV[5])
  if rpm - used_req < 4 * want then want = 1 end
  grant = math.min(want, rpm - used_req)
  local entries = {}
  for i = 1, grant do
    entries[#entries + 1] = now_ms
    entries[#entries + 1] = ARGV[3] .. i
  end
  redis.call('ZADD', KEYS[1], unpack(entries))
  redis.call('PEXPIRE', KEYS[1], window_ms)
  used_req = used_req + grant
  if req_reset_ms == 0 then req_reset_ms = window_ms end
end
local reserved = 0
local now_s = math.floor(now_ms / 1000)
if tpm >= 0 then
  reserved = tonumber(ARGV[6])
  local budget = tonumber(ARGV[7])
  if budget > reserved and tpm - used_tok >= 4 * budget then reserved = budget end
  redis.call('HINCRBY', KEYS[2], now_s, reserved)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
  used_tok = used_tok + reserved
end
return {1, 0, used_req, used_tok, math.max(req_reset_ms, tok_reset_ms), grant, reserved, now_s}
"""

# Settle a reservation: its bucket (the second it was made in) gets the difference between the
# tokens used and those reserved; a bucket already out of the window gets nothing back, and the
# tokens used are charged to the current second instead.
# Settles several keys' reservations at once: KEYS[i] with ARGV (second, delta, used) at
# 3i-1..3i+1 after the window in ARGV[1].
_SETTLE = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local window = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local second = tonumber(ARGV[3 * i - 1])
  if second > now_s - window then
    redis.call('HINCRBY', key, second, ARGV[3 * i])
  elseif tonumber(ARGV[3 * i + 1]) > 0 then
    redis.call('HINCRBY', key, now_s, ARGV[3 * i + 1])
  end
  redis.call('EXPIRE', key, window * 2)
end
return #KEYS
"""
_SETTLE_BATCH = 500  # keys per call: bounds the time Redis spends in one script


@dataclass(slots=True)
class Decision:
    allowed: bool
    limited_by: str | None  # "requests" | "tokens" when refused
    requests_used: int
    tokens_used: int
    reset_ms: int
    granted: int = 1  # request slots reserved by this call (leases)
    reserved: int = 0  # tokens this request reserved against the TPM limit
    reserved_second: int = 0  # the Redis second whose bucket holds the reservation

    def headers(self, rpm: int | None, tpm: int | None) -> list[tuple[bytes, bytes]]:
        # Bytes formatting, not str().encode(): six headers on every rate-limited response.
        reset = b"%.3fs" % ((self.reset_ms if self.reset_ms > 0 else 0) / 1000)
        headers: list[tuple[bytes, bytes]] = []
        if rpm is not None:
            left = rpm - self.requests_used
            headers += (
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % (left if left > 0 else 0)),
                (b"x-ratelimit-reset-requests", reset),
            )
        if tpm is not None:
            left = tpm - self.tokens_used
            headers += (
                (b"x-ratelimit-limit-tokens", b"%d" % tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % (left if left > 0 else 0)),
                (b"x-ratelimit-reset-tokens", reset),
            )
        return headers

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.reset_ms / 1000))


@dataclass(slots=True, eq=False)
class _KeyLease:
    """Request slots this replica reserved for one key and has not handed out yet."""

    slots: list[str]
    expires: float  # monotonic
    requests_used: int  # the window's count when leased (reserved slots included)
    tokens_used: int
    reset_ms: int
    tokens: int = 0  # leased token budget not handed out yet
    tokens_second: int = 0  # its bucket
    arrivals: int = 0  # requests seen in the current rate window
    rate_since: float = 0.0
    rate_per_s: float = 0.0
    seen: float = 0.0  # last request (monotonic)
    leasing: bool = False  # a Redis call for this key is in flight
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class RateLimiter:
    """Admission through the pipelined client (redis:// and unix:// URLs), else redis-py."""

    def __init__(
        self,
        redis_url: str,
        fallback: aioredis.Redis,
        connect_timeout_s: float = 1.0,
        reply_timeout_s: float = 0.5,
    ) -> None:
        self._fast: PipelinedRedis | None = None
        try:
            self._fast = PipelinedRedis(redis_url, connect_timeout_s, reply_timeout_s)
        except ValueError:
            self._fast = None
        if self._fast is not None:
            self._admit_sha = self._fast.script(_ADMIT)
            self._settle_sha = self._fast.script(_SETTLE)
        self._redis = fallback
        self._admit = fallback.register_script(_ADMIT)
        self._settle = fallback.register_script(_SETTLE)
        # Unique per limiter (several may share a process), so admission entries never collide.
        self._member_prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}:"
        self._counter = itertools.count()
        self._leases: dict[str, _KeyLease] = {}
        # (expiry, key id) of leases holding slots: the periodic release looks at the due ones
        # only (a scan of every key's lease, ten times a second, cost 14 % of the gateway's CPU
        # with 10,000 keys). An entry whose lease was renewed since is skipped.
        self._expiring: list[tuple[float, str]] = []
        self._idle_checked = time.monotonic()

    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, reserve: int = 0
    ) -> Decision:
        """Admit one request, reserving `reserve` tokens when the key has a TPM limit (at most
        the limit itself, so a large request waits for an empty window instead of never
        passing). The caller settles the reservation with `settle` once the request ended."""
        if tpm is None:
            reserve = 0
        elif reserve > tpm:
            reserve = tpm
        elif reserve < 0:
            reserve = 0
        if rpm is None:
            return await self._call(key_id, rpm, tpm, want=1, reserve=reserve)[0]
        while True:
            lease = self._leases.get(key_id)
            now = time.monotonic()
            if lease is not None:
                # The key's arrival rate (sizes the next lease), inline: every request.
                lease.seen = now
                lease.arrivals += 1
                elapsed = now - lease.rate_since
                if elapsed >= LEASE_S:
                    lease.rate_per_s = lease.arrivals / elapsed
                    lease.arrivals = 0
                    lease.rate_since = now
                if lease.slots and now < lease.expires and lease.tokens >= reserve:
                    lease.slots.pop()
                    lease.tokens -= reserve
                    return Decision(
                        True,
                        None,
                        lease.requests_used - len(lease.slots),
                        lease.tokens_used - lease.tokens,
                        lease.reset_ms,
                        1,
                        reserve,
                        lease.tokens_second,
                    )
                if lease.leasing:
                    # Another request of this key is leasing: share its result.
                    waiter = asyncio.get_running_loop().create_future()
                    lease.waiters.append(waiter)
                    await waiter
                    continue
            return await self._lease(key_id, rpm, tpm, reserve, lease, now)

    async def _lease(
        self,
        key_id: str,
        rpm: int,
        tpm: int | None,
        reserve: int,
        lease: _KeyLease | None,
        now: float,
    ) -> Decision:
        """One Redis call for this key at a time: later requests wait for it (admit loops)."""
        want = 1
        if lease is None:
            lease = self._leases[key_id] = _KeyLease([], 0.0, 0, 0, 0, rate_since=now, seen=now)
        else:
            want = max(1, min(MAX_LEASE, math.ceil(lease.rate_per_s * LEASE_S)))
        lease.leasing = True  # set before any await: no second call can start meanwhile
        try:
            await self._release(key_id, lease)  # expired slots, if any, go back first
            call, prefix = self._call(key_id, rpm, tpm, want, reserve)
            decision = await call
        finally:
            lease.leasing = False
            waiters, lease.waiters = lease.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if decision.allowed and decision.granted > 1:
            # One slot is this request's; the others serve the next requests here.
            lease.slots.extend(f"{prefix}{i}" for i in range(2, decision.granted + 1))
            lease.expires = time.monotonic() + LEASE_S
            heapq.heappush(self._expiring, (lease.expires, key_id))
            lease.requests_used = decision.requests_used
            lease.tokens_used = decision.tokens_used
            lease.reset_ms = decision.reset_ms
            decision.requests_used -= len(lease.slots)
            if tpm is not None:
                # Beyond this request's own reservation, the budget serves the next ones here.
                lease.tokens = decision.reserved - reserve
                lease.tokens_second = decision.reserved_second
                decision.reserved = reserve
                decision.tokens_used -= lease.tokens
        return decision

    def _call(
        self, key_id: str, rpm: int | None, tpm: int | None, want: int, reserve: int
    ) -> tuple[Awaitable[Decision], str]:
        prefix = f"{self._member_prefix}{next(self._counter)}:"
        keys = [rate_limit_key(key_id, "rpm", WINDOW_S), rate_limit_key(key_id, "tpm", WINDOW_S)]
        args: list[str | int] = [
            -1 if rpm is None else rpm,
            -1 if tpm is None else tpm,
            prefix,
            WINDOW_S,
            want,
            reserve,
            reserve * want,  # the token budget a lease of `want` requests would take
        ]

        async def call() -> Decision:
            if self._fast is not None:
                result = await self._fast.evalsha(self._admit_sha, keys, args)
            else:
                result = await self._admit(keys=keys, args=args)
            assert isinstance(result, list)
            allowed, reason, used_req, used_tok, reset_ms, granted, reserved, second = (
                int(cast(int, v)) for v in result
            )
            return Decision(
                allowed=bool(allowed),
                limited_by={1: "requests", 2: "tokens"}.get(reason),
                requests_used=used_req,
                tokens_used=used_tok,
                reset_ms=reset_ms,
                granted=granted,
                reserved=reserved,
                reserved_second=second,
            )

        return call(), prefix

    async def _release(self, key_id: str, lease: _KeyLease) -> None:
        """Give back slots and tokens leased and not used, so other replicas can admit with
        them."""
        if lease.tokens:
            tokens, lease.tokens = lease.tokens, 0
            await self.settle(key_id, lease.tokens_second, -tokens, 0)
        if not lease.slots:
            return
        members, lease.slots = lease.slots, []
        key = rate_limit_key(key_id, "rpm", WINDOW_S)
        if self._fast is not None:
            await self._fast.command("ZREM", key, *members)
        else:
            await self._redis.zrem(key, *members)

    async def release_expired(self) -> None:
        """Periodic: return slots of leases past their time (traffic stopped or slowed)."""
        now = time.monotonic()
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            expires, key_id = heapq.heappop(expiring)
            lease = self._leases.get(key_id)
            # Renewed since, or being renewed (its new lease gives the old slots back first).
            if lease is None or lease.expires != expires or lease.leasing:
                continue
            if lease.slots or lease.tokens:
                await self._release(key_id, lease)
        if now - self._idle_checked >= WINDOW_S:
            self._idle_checked = now
            for key_id, lease in list(self._leases.items()):
                if not lease.slots and not lease.leasing and now - lease.seen > WINDOW_S:
                    del self._leases[key_id]  # key idle for a while: forget its rate

    async def release_all(self) -> None:
        for key_id, lease in list(self._leases.items()):
            await self._release(key_id, lease)

    async def settle(self, key_id: str, second: int, delta: int, used: int) -> None:
        """Correct the reservation made in `second` by `delta` (tokens used minus reserved);
        `used` is charged now instead when that second left the window (second 0: nothing was
        reserved, as when the limiter was down at admission)."""
        await self.settle_many([(key_id, second, delta, used)])

    async def settle_many(self, settlements: list[tuple[str, int, int, int]]) -> None:
        """`settle` for many (key id, second, delta, used) at once: one script call per
        `_SETTLE_BATCH` keys (one call per key cost a round trip's encoding each, per request,
        with many keys at modest rates)."""
        settlements = [item for item in settlements if item[2] or item[3]]
        for start in range(0, len(settlements), _SETTLE_BATCH):
            keys: list[str] = []
            args: list[str | int] = [WINDOW_S]
            for key_id, second, delta, used in settlements[start : start + _SETTLE_BATCH]:
                keys.append(rate_limit_key(key_id, "tpm", WINDOW_S))
                args += (second, delta, used)
            if self._fast is not None:
                await self._fast.evalsha(self._settle_sha, keys, args)
            else:
                await self._settle(keys=keys, args=args)

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
