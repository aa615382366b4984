"""Per-key rate limits shared by every gateway replica: one Lua script, one Redis round trip.

Requests per minute use a sliding-window log (a sorted set of admission times): in any 60 s,
at most N requests pass, whichever replica admitted them, so the limit is exact, unlike
per-replica counters. Tokens per minute use per-second buckets summed over the last 60 s; a
request is admitted while the tokens already used stay under the limit, and its own tokens are
added once the engine reported them. Times come from the Redis server's clock, so replicas with
skewed clocks agree.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from core.redis_keys import rate_limit_key
from gateway.resp import PipelinedRedis

WINDOW_S = 60

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
    return {0, 1, used_req, 0, req_reset_ms}
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
  if used_tok >= tpm then
    return {0, 2, used_req, used_tok, tok_reset_ms}
  end
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window_ms)
  used_req = used_req + 1
  if req_reset_ms == 0 then req_reset_ms = window_ms end
end
return {1, 0, used_req, used_tok, math.max(req_reset_ms, tok_reset_ms)}
"""

_ADD_TOKENS = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""


@dataclass(slots=True)
class Decision:
    allowed: bool
    limited_by: str | None  # "requests" | "tokens" when refused
    requests_used: int
    tokens_used: int
    reset_ms: int

    def headers(self, rpm: int | None, tpm: int | None) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        reset = f"{max(0, self.reset_ms) / 1000:.3f}s".encode()
        if rpm is not None:
            headers.append((b"x-ratelimit-limit-requests", str(rpm).encode()))
            headers.append(
                (b"x-ratelimit-remaining-requests", str(max(0, rpm - self.requests_used)).encode())
            )
            headers.append((b"x-ratelimit-reset-requests", reset))
        if tpm is not None:
            headers.append((b"x-ratelimit-limit-tokens", str(tpm).encode()))
            headers.append(
                (b"x-ratelimit-remaining-tokens", str(max(0, tpm - self.tokens_used)).encode())
            )
            headers.append((b"x-ratelimit-reset-tokens", reset))
        return headers

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.reset_ms / 1000))


class RateLimiter:
    """Admission through the pipelined client (redis:// and unix:// URLs), else redis-py."""

    def __init__(self, redis_url: str, fallback: aioredis.Redis) -> None:
        self._fast: PipelinedRedis | None = None
        try:
            self._fast = PipelinedRedis(redis_url)
        except ValueError:
            self._fast = None
        if self._fast is not None:
            self._admit_sha = self._fast.script(_ADMIT)
            self._add_sha = self._fast.script(_ADD_TOKENS)
        self._admit = fallback.register_script(_ADMIT)
        self._add_tokens = fallback.register_script(_ADD_TOKENS)
        self._member_prefix = f"{socket.gethostname()}:{os.getpid()}:"
        self._counter = itertools.count()

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> Decision:
        member = f"{self._member_prefix}{next(self._counter)}"
        keys = [rate_limit_key(key_id, "rpm", WINDOW_S), rate_limit_key(key_id, "tpm", WINDOW_S)]
        args: list[str | int] = [
            -1 if rpm is None else rpm,
            -1 if tpm is None else tpm,
            member,
            WINDOW_S,
        ]
        if self._fast is not None:
            result = await self._fast.evalsha(self._admit_sha, keys, args)
        else:
            result = await self._admit(keys=keys, args=args)
        assert isinstance(result, list)
        allowed, reason, used_req, used_tok, reset_ms = (int(cast(int, v)) for v in result)
        return Decision(
            allowed=bool(allowed),
            limited_by={1: "requests", 2: "tokens"}.get(reason),
            requests_used=used_req,
            tokens_used=used_tok,
            reset_ms=reset_ms,
        )

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        keys = [rate_limit_key(key_id, "tpm", WINDOW_S)]
        if self._fast is not None:
            await self._fast.evalsha(self._add_sha, keys, [tokens, WINDOW_S])
        else:
            await self._add_tokens(keys=keys, args=[tokens, WINDOW_S])

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
