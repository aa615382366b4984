"""Redis keys and pub/sub channels shared by the API, the gateway, the worker and the autoscaler.

The routing registry is what the gateway follows: a hash of routable instances plus a channel
announcing each change, so every gateway replica keeps an in-memory copy without touching Redis
on the hot path.
"""

from __future__ import annotations

PREFIX = "inventiv"

# hash: instance_id -> RoutableInstance JSON (only instances that may receive new requests)
ROUTING_REGISTRY = f"{PREFIX}:routing"
# channel: RegistryChange JSON on every add/remove
ROUTING_CHANNEL = f"{PREFIX}:routing:changes"

# hash: instance_id -> latest heartbeat load JSON (InstanceLoad), with its timestamp
INSTANCE_LOAD = f"{PREFIX}:load:instances"

# channel: api key hash revoked or changed (gateway drops it from its cache)
API_KEY_CHANNEL = f"{PREFIX}:apikeys:changes"

# channel: a deployment id, published by a gateway when a request waits with no instance to serve
# it; the worker signals that deployment's AutoscalerWorkflow (scale from zero, at once)
AUTOSCALER_WAKE_CHANNEL = f"{PREFIX}:autoscaler:wake"

# channel: live events for the dashboard (instance changes, actions, scaling decisions)
EVENTS_CHANNEL = f"{PREFIX}:events"
# stream holding recent events so SSE reconnects can resume with Last-Event-ID
EVENTS_STREAM = f"{PREFIX}:events:stream"


def gateway_load_key(deployment_id: str) -> str:
    """hash: gateway replica id -> GatewayLoad JSON (queue wait, in-flight, arrival rate)."""
    return f"{PREFIX}:load:gateway:{deployment_id}"


def gateway_samples_key(deployment_id: str) -> str:
    """sorted set (score: epoch seconds): the autoscaler's past readings of every replica's
    GatewayLoad, JSON {replica id: GatewayLoad}; the window's start is read back from it."""
    return f"{PREFIX}:autoscaler:samples:{deployment_id}"


def rate_limit_key(api_key_id: str, kind: str, window: int) -> str:
    return f"{PREFIX}:ratelimit:{api_key_id}:{kind}:{window}"
