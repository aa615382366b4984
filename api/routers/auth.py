"""Login for people: a bearer token in the body and the same token as an httpOnly cookie."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field
from sqlmodel import select

from api.deps import SESSION_COOKIE, CurrentUser, SessionDep, SettingsDep
from api.security import create_access_token, verify_password
from core.models import User

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=255)
    password: str = Field(min_length=1, max_length=1024)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Me(BaseModel):
    id: str
    email: str
    role: str


@router.post("/login", response_model=Token)
async def login(
    body: LoginRequest, response: Response, session: SessionDep, settings: SettingsDep
) -> Token:
    user = (
        await session.exec(select(User).where(User.email == body.email.strip().lower()))
    ).first()
    if (
        user is None
        or not user.is_active
        or not verify_password(body.password, user.hashed_password)
    ):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong e-mail or password")
    token = create_access_token(
        str(user.id), settings.secret_key or "", settings.access_token_ttl_s
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.access_token_ttl_s,
        httponly=True,
        samesite="lax",
        secure=False,
    )
    return Token(access_token=token, expires_in=settings.access_token_ttl_s)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me", response_model=Me)
async def me(user: CurrentUser) -> Me:
    return Me(id=str(user.id), email=user.email, role=user.role.value)
