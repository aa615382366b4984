"""Hashes of high-entropy secrets (API keys, agent tokens), shared by the API and the gateway."""

from __future__ import annotations

import hashlib


def token_hash(secret: str) -> str:
    """SHA-256 hex: enough for random secrets (passwords use argon2 instead)."""
    return hashlib.sha256(secret.encode()).hexdigest()
