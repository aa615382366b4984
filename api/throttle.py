"""Login throttling that holds under concurrency.

Each attempt first reserves a slot in Redis (one Lua script: atomic across API replicas), and
only then is the password hash verified, so concurrent guesses cannot slip past a counter that
is read before and written after the slow check. Two limiters, both must allow the attempt:

- per account and client address: `login_free_attempts` tries, then each further one waits
  longer (`login_first_delay_s`, doubling, up to `login_max_delay_s`); a success clears it. Someone guessing
  at an account from one address slows only themselves: its owner still logs in from elsewhere.
- per client address, any account: `login_free_attempts_per_address` failures, then the same
  growing delays (a success gives its reservation back), against spraying many accounts.

Counters are forgotten after a day without attempts. Redis keys hold hashes, never addresses
or e-mails.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import HTTPException, Request, status

from core.redis_keys import PREFIX
from core.settings import Settings
from core.tokens import token_hash

MEMORY_MS = 24 * 3600 * 1000

# KEYS: the limiters; ARGV: now (ms), first delay, longest delay, memory (ms), then each key's
# free attempts. Returns 0 when reserved, else the milliseconds to wait.
_RESERVE = """
local now = tonumber(ARGV[1])
local wait = 0
for _, key in ipairs(KEYS) do
  local blocked_until = tonumber(redis.call('HGET', key, 'until') or '0')
  if blocked_until > now then wait = math.max(wait, blocked_until - now) end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[4 + i])
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n >= free then
    local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (n - free))
    redis.call('HSET', key, 'until', now + delay)
  end
  redis.call('PEXPIRE', key, ARGV[4])
end
return 0
"""


def client_address(request: Request) -> str:
    """The caller's address (behind a trusted proxy, the one it forwarded)."""
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Attempt:
    """A reserved attempt: `succeeded()` after the right password, nothing after a wrong one."""

    redis: aioredis.Redis
    account_key: str
    address_key: str

    async def succeeded(self) -> None:
        await self.redis.delete(self.account_key)
        await self.redis.hincrby(self.address_key, "n", -1)


async def reserve_attempt(
    redis: aioredis.Redis, settings: Settings, account: str, address: str
) -> Attempt:
    """Reserve one password check for the account from the address, or 429 with Retry-After."""
    address_hash = token_hash(address)
    account_key = f"{PREFIX}:logins:account:{token_hash(account.lower())}:{address_hash}"
    address_key = f"{PREFIX}:logins:address:{address_hash}"
    wait_ms = await redis.eval(  # type: ignore[misc]
        _RESERVE,
        2,
        account_key,
        address_key,
        int(time.time() * 1000),
        int(settings.login_first_delay_s * 1000),
        int(settings.login_max_delay_s * 1000),
        MEMORY_MS,
        settings.login_free_attempts,
        settings.login_free_attempts_per_address,
    )
    if int(wait_ms) > 0:
        wait = max(1, math.ceil(int(wait_ms) / 1000))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many password attempts: try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return Attempt(redis, account_key, address_key)
