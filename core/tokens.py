"""Hashes of high-entropy secrets (API keys, agent tokens), shared by the API and the gateway."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def token_hash(secret: str) -> str:
    """SHA-256 hex: enough for random secrets (passwords use argon2 instead)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_token(secret_key: str, instance_id: str) -> str:
    """The per-instance heartbeat token. Derived (HMAC), so a retried create hands the machine the
    same token and nothing secret has to travel through workflow history; only its hash is stored.
    """
    return hmac.new(secret_key.encode(), f"agent:{instance_id}".encode(), "sha256").hexdigest()


def engine_api_key(secret_key: str, instance_id: str) -> str:
    """The per-instance engine API key (vLLM's `--api-key`). Derived like the agent token, so the
    gateway, the agent and the activities compute it from the instance id alone and it never
    travels through workflow history or the database."""
    return hmac.new(secret_key.encode(), f"engine:{instance_id}".encode(), "sha256").hexdigest()


def new_machine_credential() -> str:
    """A tunnelled machine's credential (random; only its hash is stored)."""
    return "imc_" + secrets.token_urlsafe(32)
