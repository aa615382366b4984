"""Sessions and agent tokens come from separate keys derived from the secret key: a session
signed with the secret key itself, or with the key agent tokens come from, is refused."""

from __future__ import annotations

import hmac
import time
import uuid

import httpx
import jwt

from core.settings import Settings
from core.tokens import agent_token, derived_key, session_signing_key
from tests.api.conftest import Tenant


def signed(key: str | bytes, subject: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + 600, "jti": "x", "ver": 0}
    return jwt.encode(claims, key, algorithm="HS256")


async def test_only_the_session_key_signs_sessions(
    client: httpx.AsyncClient, alice: Tenant, settings: Settings
) -> None:
    secret_key = settings.require("secret_key")
    subject = str(alice.user.id)
    me = "/api/v1/auth/me"
    good = signed(session_signing_key(secret_key), subject)
    assert (await client.get(me, headers={"Authorization": f"Bearer {good}"})).status_code == 200
    for key in (secret_key, derived_key(secret_key, "agent-token")):
        forged = signed(key, subject)
        response = await client.get(me, headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401


def test_each_purpose_has_its_own_key() -> None:
    secret_key = "a-secret-key-" + "k" * 32
    instance_id = str(uuid.uuid4())
    keys = {
        purpose: derived_key(secret_key, purpose) for purpose in ("session-signing", "agent-token")
    }
    assert len(set(keys.values())) == 2 and secret_key.encode() not in keys.values()
    assert all(len(key) == 32 for key in keys.values())
    assert derived_key(secret_key, "agent-token") == keys["agent-token"]  # stable: retries agree
    token = agent_token(secret_key, instance_id)
    assert token == agent_token(secret_key, instance_id)
    assert token != hmac.new(secret_key.encode(), instance_id.encode(), "sha256").hexdigest()
    assert token != agent_token("another-secret-key-" + "k" * 32, instance_id)
