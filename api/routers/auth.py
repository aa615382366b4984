"""Login for people: a bearer token in the body and the same token as an httpOnly cookie;
logout ends that session everywhere (the token is refused until it would have expired).
Password checks (login, password change) are throttled by api/throttle.py."""

from __future__ import annotations

import asyncio
import secrets
import uuid

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.deps import (
    SESSION_COOKIE,
    CurrentUser,
    RedisDep,
    SessionDep,
    SessionToken,
    SettingsDep,
)
from api.errors import error_responses
from api.security import (
    create_access_token,
    hash_password,
    revoked_session_key,
    token_seconds_left,
    verify_password,
)
from api.throttle import client_address, reserve_attempt
from api.validation import Password
from core.models import Project, ProjectMember, Role, User

_UNKNOWN_USER_HASH = hash_password(secrets.token_urlsafe(16))

router = APIRouter(prefix="/auth", tags=["auth"], responses=error_responses(400, 401))


class LoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=255)
    password: str = Field(min_length=1, max_length=1024)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class ProjectRef(BaseModel):
    id: uuid.UUID
    name: str


class Me(BaseModel):
    id: str
    email: str
    full_name: str | None
    role: Role
    projects: list[ProjectRef]


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: Password


@router.post("/login", response_model=Token, responses=error_responses(429))
async def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
) -> Token:
    """Log in: the token comes back in the body and as the httpOnly session cookie. Repeated
    wrong passwords make further tries from the same address wait longer and longer (429)."""
    email = body.email.strip().lower()
    attempt = await reserve_attempt(redis, settings, email, client_address(request))
    user = (await session.exec(select(User).where(User.email == email))).first()
    # Hash either way (off the event loop): the answer takes as long for an unknown e-mail.
    hashed = user.hashed_password if user is not None else _UNKNOWN_USER_HASH
    password_ok = await asyncio.to_thread(verify_password, body.password, hashed)
    if user is None or not user.is_active or not password_ok:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong e-mail or password")
    await attempt.succeeded()
    token = create_access_token(
        str(user.id),
        settings.require("secret_key"),
        settings.access_token_ttl_s,
        user.token_version,
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.access_token_ttl_s,
        httponly=True,
        samesite="lax",
        # The scheme is the proxy's only when it is a trusted one (INVENTIV_TRUSTED_PROXIES).
        secure=request.url.scheme == "https"
        if settings.cookie_secure is None
        else settings.cookie_secure,
    )
    return Token(access_token=token, expires_in=settings.access_token_ttl_s)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    response: Response, token: SessionToken, redis: RedisDep, settings: SettingsDep
) -> None:
    """End this session: the cookie is cleared and the token refused from now on."""
    if token:
        left = token_seconds_left(token, settings.require("secret_key"))
        if left > 0:
            await redis.set(revoked_session_key(token), "1", ex=left)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me", response_model=Me)
async def me(user: CurrentUser, session: SessionDep) -> Me:
    """Who is logged in, and the projects they belong to (admins see every project)."""
    query = select(Project).order_by(col(Project.name))
    if user.role != Role.admin:
        query = query.join(ProjectMember).where(ProjectMember.user_id == user.id)
    projects = (await session.exec(query)).all()
    return Me(
        id=str(user.id),
        email=user.email,
        full_name=user.full_name,
        role=user.role,
        projects=[ProjectRef(id=p.id, name=p.name) for p in projects],
    )


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(429))
async def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
) -> None:
    """Change your password: every session of yours ends, this one too (log in again). Wrong
    current passwords are throttled as logins are."""
    attempt = await reserve_attempt(redis, settings, user.email, client_address(request))
    if not await asyncio.to_thread(verify_password, body.current_password, user.hashed_password):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the current password is wrong")
    await attempt.succeeded()
    user.hashed_password = await asyncio.to_thread(hash_password, body.new_password)
    user.token_version += 1
    session.add(user)
    await session.commit()
    response.delete_cookie(SESSION_COOKIE)
