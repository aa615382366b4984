"""People (admin only): create, list, change role or password, disable, delete.

A password reset or disabling ends every session the person had; disabling or deleting also
revokes the API keys they created (reassign them first with POST /keys/reassign to keep them)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlmodel import col, func, select

from api.deps import CurrentAdmin, RedisDep, SessionDep
from api.errors import ADMIN_ERRORS
from api.revocation import announce_revoked, revoke_keys_created_by
from api.security import hash_password
from api.validation import Email, Name, PartialUpdate, Password
from core.models import ProjectMember, Role, User

router = APIRouter(prefix="/users", tags=["users"], responses=ADMIN_ERRORS)


class UserBase(BaseModel):
    email: Email
    full_name: Name | None = None
    role: Role = Role.member
    is_active: bool = True


class UserCreate(UserBase):
    password: Password


class UserUpdate(PartialUpdate):
    email: Email | None = None
    full_name: Name | None = None
    role: Role | None = None
    is_active: bool | None = None
    password: Password | None = None

    nullable = frozenset({"full_name"})


class UserPublic(BaseModel):
    id: uuid.UUID
    email: str
    full_name: str | None
    role: Role
    is_active: bool
    created_at: datetime
    project_ids: list[uuid.UUID]


class UserPage(BaseModel):
    items: list[UserPublic]
    total: int


async def _public(session: SessionDep, user: User) -> UserPublic:
    rows = await session.exec(
        select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
    )
    return UserPublic(
        **user.model_dump(include={"id", "email", "full_name", "role", "is_active", "created_at"}),
        project_ids=list(rows.all()),
    )


async def _get(session: SessionDep, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


async def _email_taken(session: SessionDep, email: str, but: uuid.UUID | None = None) -> None:
    query = select(User.id).where(User.email == email)
    if but is not None:
        query = query.where(User.id != but)
    if (await session.exec(query)).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a user with e-mail {email} exists")


@router.get("", response_model=UserPage)
async def list_users(
    session: SessionDep,
    admin: CurrentAdmin,
    limit: int = Query(default=100, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> UserPage:
    total = (await session.exec(select(func.count()).select_from(User))).one()
    users = (
        await session.exec(select(User).order_by(col(User.email)).limit(limit).offset(offset))
    ).all()
    return UserPage(items=[await _public(session, u) for u in users], total=total)


@router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep, admin: CurrentAdmin) -> UserPublic:
    await _email_taken(session, body.email)
    hashed = await asyncio.to_thread(hash_password, body.password)
    user = User(**body.model_dump(exclude={"password"}), hashed_password=hashed)
    session.add(user)
    await session.commit()
    return await _public(session, user)


@router.get("/{user_id}", response_model=UserPublic)
async def get_user(user_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> UserPublic:
    return await _public(session, await _get(session, user_id))


@router.patch("/{user_id}", response_model=UserPublic)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, session: SessionDep, redis: RedisDep, admin: CurrentAdmin
) -> UserPublic:
    user = await _get(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    if user.id == admin.id and (
        changes.get("role") == Role.member or changes.get("is_active") is False
    ):
        raise HTTPException(
            status.HTTP_409_CONFLICT, "you cannot demote or disable yourself; ask another admin"
        )
    if changes.get("email") is not None:
        await _email_taken(session, changes["email"], but=user.id)
    password = changes.pop("password", None)
    if password is not None:
        user.hashed_password = await asyncio.to_thread(hash_password, password)
    disabled = user.is_active and changes.get("is_active") is False
    if password is not None or disabled:
        user.token_version += 1  # every session issued before ends
    revoked = await revoke_keys_created_by(session, user.id) if disabled else []
    for field, value in changes.items():
        setattr(user, field, value)
    session.add(user)
    await session.commit()
    await announce_revoked(redis, revoked)
    return await _public(session, user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    user_id: uuid.UUID, session: SessionDep, redis: RedisDep, admin: CurrentAdmin
) -> None:
    """Delete a person and their memberships; the API keys they created are revoked (reassign
    them first to keep them)."""
    user = await _get(session, user_id)
    if user.id == admin.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot delete yourself")
    revoked = await revoke_keys_created_by(session, user.id)
    await session.delete(user)
    await session.commit()
    await announce_revoked(redis, revoked)
