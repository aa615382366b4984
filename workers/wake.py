"""Relays the gateways' wake-ups (Redis) to the AutoscalerWorkflows (Temporal signals).

The gateway must not load Temporal, so when a request waits for a deployment with no instance
it publishes the deployment's id on AUTOSCALER_WAKE_CHANNEL; every worker follows the channel and
signals that deployment's autoscaler, which decides at once instead of at its next tick (a
second signal from another worker only wakes it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.service import RPCError

from core.redis_keys import AUTOSCALER_WAKE_CHANNEL
from workflows.client import wake_autoscaler

log = logging.getLogger(__name__)


async def follow_wake_ups(redis: aioredis.Redis, client: Client, subscribed: asyncio.Event) -> None:
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(AUTOSCALER_WAKE_CHANNEL)
            subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is None:
                    continue
                deployment_id = str(message["data"])
                try:
                    await wake_autoscaler(client, deployment_id)
                except RPCError as exc:  # Temporal away: the autoscaler's next tick comes anyway
                    log.warning("could not wake the autoscaler of %s: %s", deployment_id, exc)
        except (RedisError, OSError) as exc:
            log.warning("lost the autoscaler wake-up channel (%s); reconnecting", exc)
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
