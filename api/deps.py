"""Dependency aliases (SessionDep, RedisDep, CurrentUser, ...) in the full-stack-fastapi style."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.security import decode_access_token, revoked_session_key
from core.models import Role, User
from core.settings import Settings

SESSION_COOKIE = "inventiv_session"
CSRF_HEADER = "X-Requested-With"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def get_temporal(request: Request) -> Client:
    return request.app.state.temporal  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


def session_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The session token: a bearer token, else the httpOnly session cookie. A cookie-borne
    request that changes state must carry `X-Requested-With` (the dashboard sends it): another
    site's form or image can send the cookie, never a custom header."""
    if credentials:
        return credentials.credentials
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method not in SAFE_METHODS and not request.headers.get(CSRF_HEADER):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"a request authenticated by the session cookie that changes state needs the "
            f"{CSRF_HEADER} header",
        )
    return cookie


SessionToken = Annotated[str | None, Depends(session_token)]


async def authenticate(
    session: AsyncSession, redis: aioredis.Redis, settings: Settings, token: str | None
) -> User:
    """The active user a session token belongs to, unless it expired, was logged out, or was
    issued before the user's password changed (or the user was disabled)."""
    claims = decode_access_token(token, settings.require("secret_key")) if token else None
    if claims is not None and token and await redis.exists(revoked_session_key(token)):
        claims = None
    if claims is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "not authenticated: log in at POST /api/v1/auth/login",
            headers={"WWW-Authenticate": "Bearer"},
        )
    subject, version = claims
    try:
        user = await session.get(User, uuid.UUID(subject))
    except ValueError:
        user = None
    if user is None or not user.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "user is unknown or disabled")
    if version != user.token_version:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this session ended when the password changed: log in again",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


async def get_current_user(
    session: SessionDep, redis: RedisDep, settings: SettingsDep, token: SessionToken
) -> User:
    """A person logged in with a bearer token or the httpOnly session cookie, not logged out."""
    return await authenticate(session, redis, settings, token)


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_current_admin(user: CurrentUser) -> User:
    if user.role != Role.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin role required")
    return user


CurrentAdmin = Annotated[User, Depends(get_current_admin)]
