"""Factories for test rows (dstack style): each returns committed objects with sane defaults."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from activities.providers.local.catalogue import LOCAL_INSTANCE_TYPE
from api.security import hash_password, new_api_key
from core.models import (
    ApiKey,
    Deployment,
    InstanceType,
    Project,
    ProjectMember,
    Provider,
    Role,
    User,
)


@dataclass
class Seeded:
    user: User
    password: str
    project: Project
    provider: Provider
    instance_type: InstanceType
    deployment: Deployment
    api_key: str
    api_key_row: ApiKey


async def make_user(
    session: AsyncSession, *, role: Role = Role.member, password: str = "pw-" + "x" * 12
) -> User:
    user = User(
        email=f"user-{uuid.uuid4().hex[:8]}@example.com",
        hashed_password=hash_password(password),
        role=role,
    )
    session.add(user)
    await session.commit()
    return user


async def seed(
    session: AsyncSession,
    *,
    role: Role = Role.admin,
    provider_kind: str = "local",
    instance_type: str = LOCAL_INSTANCE_TYPE,
    model: str = "test-model",
    engine_args: dict[str, Any] | None = None,
    boot_timeout_s: float | None = 60,
    project_name: str | None = None,
    gpu_count: int = 1,
    price_per_hour: float = 1.0,
) -> Seeded:
    password = "pw-" + uuid.uuid4().hex
    user = await make_user(session, role=role, password=password)
    project = Project(name=project_name or f"project-{uuid.uuid4().hex[:8]}")
    session.add(project)
    await session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=user.id))
    provider = Provider(name=f"{provider_kind}-{uuid.uuid4().hex[:6]}", kind=provider_kind)
    session.add(provider)
    await session.flush()
    itype = InstanceType(
        provider_id=provider.id,
        name=instance_type,
        gpu_model="sim",
        gpu_count=gpu_count,
        gpu_memory_gb=80,
        price_per_hour=price_per_hour,
    )
    session.add(itype)
    await session.flush()
    deployment = Deployment(
        project_id=project.id,
        name=f"dep-{uuid.uuid4().hex[:6]}",
        model=model,
        served_name=model,
        provider_id=provider.id,
        instance_type_id=itype.id,
        min_instances=0,
        max_instances=4,
        engine_args=engine_args or {},
        boot_timeout_s=boot_timeout_s,
    )
    session.add(deployment)
    secret, prefix, key_hash = new_api_key()
    key = ApiKey(project_id=project.id, name="test", prefix=prefix, key_hash=key_hash)
    session.add(key)
    await session.commit()
    return Seeded(user, password, project, provider, itype, deployment, secret, key)
