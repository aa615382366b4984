"""Projects and their members. Everyone sees the projects they belong to; admins manage them."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel
from sqlmodel import col, func, select

from api.access import require_project, visible_project_ids
from api.deps import CurrentAdmin, CurrentUser, RedisDep, SessionDep
from api.errors import ADMIN_ERRORS
from api.revocation import announce_revoked, revoke_keys_created_by
from api.validation import Name
from core.models import Instance, Project, ProjectMember, Role, User

router = APIRouter(prefix="/projects", tags=["projects"], responses=ADMIN_ERRORS)


class ProjectCreate(BaseModel):
    name: Name


class ProjectUpdate(BaseModel):
    name: Name


class ProjectPublic(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime


class MemberPublic(BaseModel):
    user_id: uuid.UUID
    email: str
    full_name: str | None
    role: Role


async def get_visible_project(
    session: SessionDep, user: CurrentUser, project_id: uuid.UUID
) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    await require_project(session, user, project.id)
    return project


async def _name_taken(session: SessionDep, name: str, but: uuid.UUID | None = None) -> None:
    query = select(Project.id).where(Project.name == name)
    if but is not None:
        query = query.where(Project.id != but)
    if (await session.exec(query)).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a project named {name!r} exists")


@router.get("", response_model=list[ProjectPublic])
async def list_projects(session: SessionDep, user: CurrentUser) -> list[ProjectPublic]:
    query = select(Project).order_by(col(Project.name))
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(col(Project.id).in_(visible))
    return [ProjectPublic(**p.model_dump()) for p in (await session.exec(query)).all()]


@router.post("", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
async def create_project(
    body: ProjectCreate, session: SessionDep, admin: CurrentAdmin
) -> ProjectPublic:
    await _name_taken(session, body.name)
    project = Project(name=body.name)
    session.add(project)
    await session.commit()
    return ProjectPublic(**project.model_dump())


@router.get("/{project_id}", response_model=ProjectPublic)
async def get_project(
    project_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> ProjectPublic:
    return ProjectPublic(**(await get_visible_project(session, user, project_id)).model_dump())


@router.patch("/{project_id}", response_model=ProjectPublic)
async def update_project(
    project_id: uuid.UUID, body: ProjectUpdate, session: SessionDep, admin: CurrentAdmin
) -> ProjectPublic:
    project = await get_visible_project(session, admin, project_id)
    await _name_taken(session, body.name, but=project.id)
    project.name = body.name
    session.add(project)
    await session.commit()
    return ProjectPublic(**project.model_dump())


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> None:
    """Delete a project with its deployments, keys and memberships; refused once it has had
    instances (their history and costs belong to it)."""
    project = await get_visible_project(session, admin, project_id)
    instances = (
        await session.exec(
            select(func.count()).select_from(Instance).where(Instance.project_id == project.id)
        )
    ).one()
    if instances:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"project has {instances} instance(s) on record: its history and costs are kept",
        )
    await session.delete(project)
    await session.commit()


@router.get("/{project_id}/members", response_model=list[MemberPublic])
async def list_members(
    project_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> list[MemberPublic]:
    await get_visible_project(session, user, project_id)
    rows = await session.exec(
        select(User)
        .join(ProjectMember)
        .where(ProjectMember.project_id == project_id)
        .order_by(col(User.email))
    )
    return [
        MemberPublic(user_id=u.id, email=u.email, full_name=u.full_name, role=u.role)
        for u in rows.all()
    ]


@router.put("/{project_id}/members/{user_id}", response_model=MemberPublic)
async def add_member(
    project_id: uuid.UUID, user_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> MemberPublic:
    """Make a person a member of the project (idempotent)."""
    await get_visible_project(session, admin, project_id)
    member = await session.get(User, user_id)
    if member is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    if await session.get(ProjectMember, (project_id, user_id)) is None:
        session.add(ProjectMember(project_id=project_id, user_id=user_id))
        await session.commit()
    return MemberPublic(
        user_id=member.id, email=member.email, full_name=member.full_name, role=member.role
    )


@router.delete("/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    session: SessionDep,
    redis: RedisDep,
    admin: CurrentAdmin,
) -> None:
    """Take the person out of the project: the API keys they created in it are revoked
    (reassign them first with POST /keys/reassign to keep them)."""
    await get_visible_project(session, admin, project_id)
    membership = await session.get(ProjectMember, (project_id, user_id))
    if membership is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"user {user_id} is not a member of project {project_id}"
        )
    await session.delete(membership)
    revoked = await revoke_keys_created_by(session, user_id, [project_id])
    await session.commit()
    await announce_revoked(redis, revoked)
