"""The OpenAI-compatible data plane, by role (docs/architecture.md):

- app: ASGI dispatch and error mapping; wires the parts at startup.
- proxy: one request's path (admit, acquire, forward, retry, relay) on one `ProxyRequest`.
- accounting (+ logs): usage read from answers, metrics, request-log rows, TPM tokens.
- control: background loops (pub/sub, registry and load sync, load signals) under a Supervisor.
- routing/: registry, strategies (the `Strategy` seam), queue, passive health; router composes.
- deployments, keys, ratelimit: served names, API keys, per-key limits.
- sql: every SQL statement the gateway runs (checked against core/models.py by a test).
- protocols/: the hand-written HTTP server, HTTP client and Redis RESP client.

Imports: gateway modules import only `core` and each other, never `agent`, `activities`,
`workflows`, `api` or a cloud SDK; `protocols/` imports nothing of the gateway.
"""
