"""Passwords (argon2id, memory-hard), session tokens (signed JWT), API-key and agent-token hashes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.tokens import token_hash

_hasher = PasswordHasher()
ALGORITHM = "HS256"
API_KEY_PREFIX = "sk-inv-"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def create_access_token(subject: str, secret: str, ttl_s: int) -> str:
    now = datetime.now(UTC)
    payload = {"sub": subject, "iat": now, "exp": now + timedelta(seconds=ttl_s)}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def decode_access_token(token: str, secret: str) -> str | None:
    """The subject of a valid, unexpired token; None otherwise."""
    try:
        payload = jwt.decode(token, secret, algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        return None
    sub = payload.get("sub")
    return sub if isinstance(sub, str) else None


def new_api_key() -> tuple[str, str, str]:
    """(secret shown once, visible prefix, hash to store)."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[: len(API_KEY_PREFIX) + 6], token_hash(secret)


def new_agent_token() -> tuple[str, str]:
    """(token handed to the agent, hash to store)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)
