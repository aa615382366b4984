"""Inference API keys of a project: the secret is shown once at creation and stored hashed;
revoking or changing limits reaches every gateway within seconds (Redis pub/sub). A project's
quota may set a ceiling on key limits: a key without a limit gets the ceiling, none goes past."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.access import require_project, visible_project_ids
from api.deps import CurrentAdmin, CurrentUser, RedisDep, SessionDep
from api.errors import ERRORS
from api.security import new_api_key
from api.validation import Name, PartialUpdate, PositiveLimit
from core.models import ApiKey, ProjectMember, ProjectQuota, Role, User, utcnow
from core.quotas import key_limits_within_ceiling
from core.redis_keys import API_KEY_CHANNEL

router = APIRouter(prefix="/keys", tags=["keys"], responses=ERRORS)


class ApiKeyCreate(BaseModel):
    project_id: uuid.UUID
    name: Name
    rpm_limit: PositiveLimit | None = Field(default=None, description="requests per minute")
    tpm_limit: PositiveLimit | None = Field(default=None, description="tokens per minute")


class ApiKeyUpdate(PartialUpdate):
    """Fields left out are unchanged; a limit set to null is removed."""

    name: Name | None = None
    rpm_limit: PositiveLimit | None = None
    tpm_limit: PositiveLimit | None = None

    nullable = frozenset({"rpm_limit", "tpm_limit"})


class KeysReassign(BaseModel):
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID = Field(description="a member of each project concerned, or an admin")
    project_id: uuid.UUID | None = Field(default=None, description="only this project's keys")


class KeysReassigned(BaseModel):
    reassigned: int


class ApiKeyPublic(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    prefix: str = Field(description="the first characters of the secret, to recognise it")
    rpm_limit: int | None
    tpm_limit: int | None
    created_by: uuid.UUID | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    secret: str = Field(description="the key itself: shown this once, never again")


def to_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(**key.model_dump(exclude={"key_hash"}))


async def get_visible_key(session: SessionDep, user: CurrentUser, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key {key_id} not found")
    await require_project(session, user, key.project_id)
    return key


@router.get("", response_model=list[ApiKeyPublic])
async def list_keys(
    session: SessionDep,
    user: CurrentUser,
    project_id: uuid.UUID | None = None,
    include_revoked: bool = False,
) -> list[ApiKeyPublic]:
    query = select(ApiKey).order_by(col(ApiKey.created_at).desc())
    if project_id is not None:
        await require_project(session, user, project_id)
        query = query.where(ApiKey.project_id == project_id)
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(col(ApiKey.project_id).in_(visible))
    if not include_revoked:
        query = query.where(col(ApiKey.revoked_at).is_(None))
    return [to_public(k) for k in (await session.exec(query)).all()]


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
async def create_key(body: ApiKeyCreate, session: SessionDep, user: CurrentUser) -> ApiKeyCreated:
    await require_project(session, user, body.project_id)
    quota = await session.get(ProjectQuota, body.project_id)
    rpm, tpm = key_limits_within_ceiling(quota, body.rpm_limit, body.tpm_limit)
    secret, prefix, key_hash = new_api_key()
    key = ApiKey(
        **body.model_dump(exclude={"rpm_limit", "tpm_limit"}),
        rpm_limit=rpm,
        tpm_limit=tpm,
        prefix=prefix,
        key_hash=key_hash,
        created_by=user.id,
    )
    session.add(key)
    await session.commit()
    return ApiKeyCreated(**to_public(key).model_dump(), secret=secret)


@router.post("/reassign", response_model=KeysReassigned)
async def reassign_keys(
    body: KeysReassign, session: SessionDep, admin: CurrentAdmin
) -> KeysReassigned:
    """Make another person the owner of someone's live keys, so that they survive the removal,
    disabling or deletion of their creator (which revokes the keys still theirs)."""
    target = await session.get(User, body.to_user_id)
    if target is None or not target.is_active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"active user {body.to_user_id} not found")
    query = select(ApiKey).where(
        ApiKey.created_by == body.from_user_id, col(ApiKey.revoked_at).is_(None)
    )
    if body.project_id is not None:
        query = query.where(ApiKey.project_id == body.project_id)
    keys = (await session.exec(query)).all()
    if target.role != Role.admin:
        member_of = set(
            (
                await session.exec(
                    select(ProjectMember.project_id).where(ProjectMember.user_id == target.id)
                )
            ).all()
        )
        outside = sorted({str(k.project_id) for k in keys} - {str(p) for p in member_of})
        if outside:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"user {target.email} is not a member of project(s) {', '.join(outside)}",
            )
    for key in keys:
        key.created_by = target.id
        session.add(key)
    await session.commit()
    return KeysReassigned(reassigned=len(keys))


@router.get("/{key_id}", response_model=ApiKeyPublic)
async def get_key(key_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> ApiKeyPublic:
    return to_public(await get_visible_key(session, user, key_id))


@router.patch("/{key_id}", response_model=ApiKeyPublic)
async def update_key(
    key_id: uuid.UUID, body: ApiKeyUpdate, session: SessionDep, redis: RedisDep, user: CurrentUser
) -> ApiKeyPublic:
    key = await get_visible_key(session, user, key_id)
    if key.revoked_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the key is revoked")
    changes = body.model_dump(exclude_unset=True)
    if {"rpm_limit", "tpm_limit"} & set(changes):  # lowered freely, never past the ceiling
        quota = await session.get(ProjectQuota, key.project_id)
        changes["rpm_limit"], changes["tpm_limit"] = key_limits_within_ceiling(
            quota, changes.get("rpm_limit", key.rpm_limit), changes.get("tpm_limit", key.tpm_limit)
        )
    for field, value in changes.items():
        setattr(key, field, value)
    session.add(key)
    await session.commit()
    await redis.publish(API_KEY_CHANNEL, key.key_hash)  # gateways reload its limits
    return to_public(key)


@router.delete("/{key_id}", response_model=ApiKeyPublic)
async def revoke_key(
    key_id: uuid.UUID, session: SessionDep, redis: RedisDep, user: CurrentUser
) -> ApiKeyPublic:
    """Revoke the key: every gateway refuses it within seconds. Revoking twice is harmless."""
    key = await get_visible_key(session, user, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        await session.commit()
    await redis.publish(API_KEY_CHANNEL, key.key_hash)
    return to_public(key)
