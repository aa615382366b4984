"""Project scoping: admins see everything; members only their projects."""

from __future__ import annotations

import uuid

from fastapi import HTTPException, status
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import ProjectMember, Role, User


async def visible_project_ids(session: AsyncSession, user: User) -> set[uuid.UUID] | None:
    """The projects the user may see; None means all (admin)."""
    if user.role == Role.admin:
        return None
    rows = await session.exec(
        select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
    )
    return set(rows.all())


async def require_project(session: AsyncSession, user: User, project_id: uuid.UUID) -> None:
    """404 (not 403) for a project the user cannot see: its existence is not disclosed."""
    visible = await visible_project_ids(session, user)
    if visible is not None and project_id not in visible:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
