"""Hashes of high-entropy secrets (API keys, agent tokens), shared by the API and the gateway."""

from __future__ import annotations

import hashlib
import hmac


def token_hash(secret: str) -> str:
    """SHA-256 hex: enough for random secrets (passwords use argon2 instead)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_token(secret_key: str, instance_id: str) -> str:
    """The per-instance heartbeat token. Derived (HMAC), so a retried create hands the machine the
    same token and nothing secret has to travel through workflow history; only its hash is stored.
    """
    return hmac.new(secret_key.encode(), f"agent:{instance_id}".encode(), "sha256").hexdigest()
