"""Hashes of high-entropy secrets (API keys, agent tokens), shared by the API and the gateway, and
the keys derived from the secret key: one per purpose (HKDF), so a key or token of one kind never
stands in for another (a session's signing key is not the key agent tokens come from).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def token_hash(secret: str) -> str:
    """SHA-256 hex: enough for random secrets (passwords use argon2 instead)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def derived_key(secret_key: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose: HKDF-SHA256 (RFC 5869) of the secret key, `purpose` as the
    info. Keys of different purposes are independent: knowing one tells nothing of another."""
    prk = hmac.new(b"inventiv", secret_key.encode(), "sha256").digest()
    return hmac.new(prk, purpose.encode() + b"\x01", "sha256").digest()


def session_signing_key(secret_key: str) -> bytes:
    """The key that signs login sessions (JWT, HS256)."""
    return derived_key(secret_key, "session-signing")


def agent_token(secret_key: str, instance_id: str) -> str:
    """The per-instance heartbeat token. Derived (HMAC with the agent-token key), so a retried
    create hands the machine the same token and nothing secret has to travel through workflow
    history; only its hash is stored."""
    key = derived_key(secret_key, "agent-token")
    return hmac.new(key, instance_id.encode(), "sha256").hexdigest()


def engine_api_key(secret_key: str, instance_id: str) -> str:
    """The per-instance engine API key (vLLM's `--api-key`). Derived like the agent token, so the
    gateway, the agent and the activities compute it from the instance id alone and it never
    travels through workflow history or the database."""
    key = derived_key(secret_key, "engine-api-key")
    return hmac.new(key, instance_id.encode(), "sha256").hexdigest()


def new_machine_credential() -> str:
    """A tunnelled machine's credential (random; only its hash is stored)."""
    return "imc_" + secrets.token_urlsafe(32)
