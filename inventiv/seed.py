"""First-start seed for `inventiv dev`: admin, project, API key, local provider, demo deployment."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.providers.local.adapter import LocalCompute
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
from core.settings import Settings


@dataclass
class DevCredentials:
    api_key: str
    admin_email: str
    admin_password: str

    def write(self, path: Path) -> None:
        """Written readable by its owner only (0600), created that way: never world-readable."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.__dict__, f, indent=2)
        path.chmod(0o600)

    @classmethod
    def read(cls, path: Path) -> DevCredentials | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None


async def _new_key(session: AsyncSession, project_id: uuid.UUID, admin_id: uuid.UUID) -> str:
    secret, prefix, key_hash = new_api_key()
    session.add(
        ApiKey(
            project_id=project_id,
            name="dev key",
            prefix=prefix,
            key_hash=key_hash,
            created_by=admin_id,
        )
    )
    return secret


async def seed_dev(session: AsyncSession, settings: Settings, creds_path: Path) -> DevCredentials:
    """Idempotent: a second start finds what the first made and keeps it."""
    admin = (await session.exec(select(User).where(User.email == settings.admin_email))).first()
    known = DevCredentials.read(creds_path)
    if admin is not None and known is not None:
        return known
    password = secrets.token_urlsafe(12)
    if admin is not None:
        # The credentials file was lost: issue a fresh password and key, keep everything else.
        admin.hashed_password = hash_password(password)
        project = (await session.exec(select(Project).where(Project.name == "demo"))).one()
        secret = await _new_key(session, project.id, admin.id)
        await session.commit()
        creds = DevCredentials(secret, settings.admin_email, password)
        creds.write(creds_path)
        return creds
    admin = User(
        email=settings.admin_email, hashed_password=hash_password(password), role=Role.admin
    )
    project = Project(name="demo")
    session.add_all([admin, project])
    await session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=admin.id))
    secret = await _new_key(session, project.id, admin.id)
    provider = Provider(name="local", kind="local", config={})
    session.add(provider)
    await session.flush()
    offer = LocalCompute(settings).catalogue()[0]
    itype = InstanceType(
        provider_id=provider.id,
        name=LOCAL_INSTANCE_TYPE,
        gpu_model=offer.gpu_model,
        gpu_count=offer.gpu_count,
        gpu_memory_gb=offer.gpu_memory_gb,
        vcpus=offer.vcpus,
        ram_gb=offer.ram_gb,
        price_per_hour=offer.price_per_hour,
        currency=offer.currency,
        zones=offer.zones,
    )
    session.add(itype)
    await session.flush()
    session.add(
        Deployment(
            project_id=project.id,
            name="demo",
            model=settings.demo_model,
            served_name=settings.demo_model,
            flavor="cpu-sim",
            provider_id=provider.id,
            instance_type_id=itype.id,
            min_instances=1,
            max_instances=2,
            # The autoscaler keeps one instance up and adds a second under load.
            autoscaling_enabled=True,
            autoscaling={"scale_up_delay_s": 30, "scale_down_delay_s": 120},
            engine_args={},
            boot_timeout_s=120,
        )
    )
    await session.commit()
    creds = DevCredentials(secret, settings.admin_email, password)
    creds.write(creds_path)
    return creds
