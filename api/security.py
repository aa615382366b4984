"""Passwords (argon2id, memory-hard), session tokens (signed JWT), API-key and agent-token hashes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.redis_keys import PREFIX
from core.tokens import session_signing_key, token_hash

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


def create_access_token(subject: str, secret: str, ttl_s: int, version: int = 0) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": subject,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_s),
        "jti": secrets.token_hex(8),  # each login its own token, so logout ends only that one
        "ver": version,  # the user's token_version: a password change ends older sessions
    }
    return jwt.encode(payload, session_signing_key(secret), algorithm=ALGORITHM)


def decode_access_token(token: str, secret: str) -> tuple[str, int] | None:
    """(subject, token version) of a valid, unexpired token; None otherwise."""
    payload = _claims(token, secret)
    sub = payload.get("sub") if payload else None
    version = payload.get("ver", 0) if payload else 0
    if not isinstance(sub, str) or not isinstance(version, int):
        return None
    return sub, version


def token_seconds_left(token: str, secret: str) -> int:
    """Seconds before a valid token expires (0 for an invalid or expired one)."""
    payload = _claims(token, secret)
    exp = payload.get("exp") if payload else None
    if not isinstance(exp, int | float):
        return 0
    return max(0, int(exp - datetime.now(UTC).timestamp()) + 1)


def _claims(token: str, secret: str) -> dict[str, object] | None:
    try:
        payload = jwt.decode(token, session_signing_key(secret), algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        return None
    return payload if isinstance(payload, dict) else None


def revoked_session_key(token: str) -> str:
    """Redis key marking a logged-out session token (kept until the token would expire)."""
    return f"{PREFIX}:sessions:revoked:{token_hash(token)}"


def new_api_key() -> tuple[str, str, str]:
    """(secret shown once, visible prefix, hash to store)."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[: len(API_KEY_PREFIX) + 6], token_hash(secret)


def new_agent_token() -> tuple[str, str]:
    """(token handed to the agent, hash to store)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)
