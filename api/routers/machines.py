"""Machines that join through the outbound tunnel: one-time enrolment, the join exchange, the
owner's sharing rules, revocation, and what the dashboard shows of them.

An admin enrols a machine for any project (or none: shared by all); a member of a project for
that project. The token is shown once (only its SHA-256 is kept) and works once, before it
expires. `POST /machines/join` (no session: the token is the proof) trades it for the machine's
own credential, bound to the Ed25519 key the machine generated; the tunnel endpoint checks both.

The join command pins the control plane's TLS identity (`--pin sha256:<hex>`, the SHA-256 of each
public certificate's SubjectPublicKeyInfo): INVENTIV_MACHINE_PIN_CERTS, or the tunnel endpoint's
INVENTIV_TUNNEL_TLS_CERT; no certificate configured, no pin. The agent sends the token and later
its credential only to a peer presenting a pinned key.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import update
from sqlmodel import col, select

from activities.providers.tunnel.settings import TunnelSettings
from api.access import require_project, visible_project_ids
from api.deps import CurrentUser, SessionDep, SettingsDep
from api.validation import Name
from core.machine_sharing import availability, local_day, parse_sharing
from core.models import Machine, MachineEnrolment, MachineUsage, Role, User, utcnow
from core.settings import Settings
from core.tokens import new_machine_credential, token_hash
from core.wire import certificate_file_pin

router = APIRouter(prefix="/machines", tags=["machines"])
log = logging.getLogger(__name__)

ENROLMENT_PREFIX = "ime_"
_MAX_ENROLMENT_S = 7 * 24 * 3600


class EnrolmentCreate(BaseModel):
    name: Name
    project_id: uuid.UUID | None = Field(
        default=None, description="The project the machine serves; none (admins only): shared"
    )
    expires_in_s: int | None = Field(
        default=None,
        ge=60,
        le=_MAX_ENROLMENT_S,
        description="Default: INVENTIV_TUNNEL_ENROLMENT_TTL_S",
    )


class EnrolmentCreated(BaseModel):
    id: uuid.UUID
    token: str = Field(description="Shown once: only its hash is kept")
    expires_at: datetime
    command: str = Field(description="What to run on the machine")
    pins: list[str] = Field(
        default_factory=list,
        description="sha256:<hex> of the control plane's TLS public keys, in the command; "
        "none when it has no TLS configured",
    )


class JoinRequest(BaseModel):
    token: str
    public_key: str = Field(
        pattern="^[0-9a-fA-F]{64}$",
        description="The machine's Ed25519 public key, raw, hex (64 chars)",
    )


class JoinAnswer(BaseModel):
    machine_id: uuid.UUID
    credential: str = Field(description="The machine's own credential (rotated over the tunnel)")
    credential_expires_at: datetime
    tunnel_url: str


class Sharing(BaseModel):
    timezone: str = "UTC"
    slots: list[dict[str, Any]] = Field(
        default_factory=list,
        description='[{"days": ["mon", "tue"], "start": "20:00", "end": "08:00"}]; none: always',
    )
    quota_gpus: int | None = None
    quota_gpu_hours_per_day: float | None = None


class MachinePublic(BaseModel):
    id: uuid.UUID
    name: str
    project_id: uuid.UUID | None
    owner_id: uuid.UUID
    owner_email: str | None
    gpu_count: int
    gpu_inventory: list[dict[str, Any]]
    sharing: Sharing
    connected: bool
    remote_address: str | None
    connected_at: datetime | None
    last_seen_at: datetime | None
    claimed_by: uuid.UUID | None
    revoked_at: datetime | None
    credential_expires_at: datetime
    available_now: bool
    availability: str
    drain_by: datetime | None
    gpu_hours_today: float


def _tunnel() -> TunnelSettings:
    return TunnelSettings()


def control_plane_pins(settings: Settings, tunnel: TunnelSettings) -> list[str]:
    """The pins of the certificates machines must see (read at each enrolment: a renewal with a
    new key shows at once). A file that cannot be read fails the enrolment: a command without
    its pin would silently trust any CA-signed certificate."""
    named = [Path(p.strip()) for p in settings.machine_pin_certs.split(",") if p.strip()]
    files = named or ([tunnel.tls_cert] if tunnel.tls_cert else [])
    pins: list[str] = []
    for path in files:
        try:
            pin = certificate_file_pin(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("cannot pin the control plane's certificate %s: %s", path, exc)
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                f"the control plane's TLS certificate {path} cannot be read to pin it: {exc}",
            ) from None
        if pin not in pins:
            pins.append(pin)
    return pins


async def _may_manage(session: SessionDep, user: User, project_id: uuid.UUID | None) -> None:
    if user.role == Role.admin:
        return
    if project_id is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only admins enrol shared machines: name your project"
        )
    await require_project(session, user, project_id)


@router.post("/enrolments", response_model=EnrolmentCreated, status_code=status.HTTP_201_CREATED)
async def create_enrolment(
    body: EnrolmentCreate, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> EnrolmentCreated:
    """A one-time token for one machine, and the command that joins it."""
    await _may_manage(session, user, body.project_id)
    tunnel = _tunnel()
    pins = control_plane_pins(settings, tunnel)
    token = ENROLMENT_PREFIX + secrets.token_urlsafe(24)
    expires = utcnow() + timedelta(seconds=body.expires_in_s or tunnel.enrolment_ttl_s)
    enrolment = MachineEnrolment(
        token_hash=token_hash(token),
        name=body.name,
        project_id=body.project_id,
        created_by=user.id,
        expires_at=expires,
    )
    session.add(enrolment)
    await session.commit()
    return EnrolmentCreated(
        id=enrolment.id,
        token=token,
        expires_at=expires,
        command=f"python -m agent join --control-plane {settings.api_url} --token {token}"
        + "".join(f" --pin {pin}" for pin in pins),
        pins=pins,
    )


@router.post(
    "/join",
    response_model=JoinAnswer,
    status_code=status.HTTP_201_CREATED,
    responses={401: {"description": "unknown token"}, 409: {"description": "token already used"},
               410: {"description": "token expired"}},
)  # fmt: skip
async def join(body: JoinRequest, session: SessionDep) -> JoinAnswer:
    """Spend an enrolment token (once) for the machine's own credential."""
    now = utcnow()
    hashed = token_hash(body.token)
    spent = await session.scalar(
        update(MachineEnrolment)
        .where(
            col(MachineEnrolment.token_hash) == hashed,
            col(MachineEnrolment.used_at).is_(None),
            col(MachineEnrolment.expires_at) > now,
        )
        .values(used_at=now)
        .returning(col(MachineEnrolment.id))
    )
    if spent is None:
        await session.rollback()
        found = await session.scalar(
            select(MachineEnrolment).where(col(MachineEnrolment.token_hash) == hashed)
        )
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown enrolment token")
        if found.used_at is not None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"this enrolment token was already used at {found.used_at.isoformat()}: "
                "ask for a new one",
            )
        raise HTTPException(
            status.HTTP_410_GONE,
            f"this enrolment token expired at {found.expires_at.isoformat()}: ask for a new one",
        )
    enrolment = await session.get(MachineEnrolment, spent)
    assert enrolment is not None
    tunnel = _tunnel()
    credential = new_machine_credential()
    expires = now + timedelta(seconds=tunnel.credential_ttl_s)
    machine = Machine(
        name=enrolment.name,
        project_id=enrolment.project_id,
        owner_id=enrolment.created_by,
        public_key=body.public_key.lower(),
        credential_hash=token_hash(credential),
        credential_expires_at=expires,
    )
    session.add(machine)
    enrolment.machine_id = machine.id
    await session.commit()
    return JoinAnswer(
        machine_id=machine.id,
        credential=credential,
        credential_expires_at=expires,
        tunnel_url=tunnel.public_url,
    )


async def _public(session: SessionDep, machine: Machine) -> MachinePublic:
    owner = await session.get(User, machine.owner_id)
    sharing = parse_sharing(
        machine.timezone, machine.slots, machine.quota_gpus, machine.quota_gpu_hours_per_day
    )
    now = utcnow()
    usage = await session.get(MachineUsage, (machine.id, local_day(now, sharing.tz)))
    used = usage.gpu_seconds / 3600 if usage is not None else 0.0
    verdict = availability(
        sharing, now=now, gpus=machine.gpu_count, used_gpu_hours_today=used,
        lead=timedelta(seconds=_tunnel().drain_lead_s),
    )  # fmt: skip
    online = machine.connected_at is not None and (
        machine.disconnected_at is None or machine.disconnected_at < machine.connected_at
    )
    return MachinePublic(
        id=machine.id,
        name=machine.name,
        project_id=machine.project_id,
        owner_id=machine.owner_id,
        owner_email=owner.email if owner else None,
        gpu_count=machine.gpu_count,
        gpu_inventory=machine.gpu_inventory,
        sharing=Sharing(
            timezone=machine.timezone,
            slots=machine.slots,
            quota_gpus=machine.quota_gpus,
            quota_gpu_hours_per_day=machine.quota_gpu_hours_per_day,
        ),
        connected=online and machine.revoked_at is None,
        remote_address=machine.remote_address,
        connected_at=machine.connected_at,
        last_seen_at=machine.last_seen_at,
        claimed_by=machine.claimed_by,
        revoked_at=machine.revoked_at,
        credential_expires_at=machine.credential_expires_at,
        available_now=verdict.available and online and machine.revoked_at is None,
        availability=verdict.reason if online else "not connected",
        drain_by=verdict.drain_by,
        gpu_hours_today=round(used, 3),
    )


async def _visible_machine(session: SessionDep, user: User, machine_id: uuid.UUID) -> Machine:
    machine = await session.get(Machine, machine_id)
    visible = await visible_project_ids(session, user)
    if machine is None or (
        visible is not None and machine.project_id not in visible and machine.owner_id != user.id
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"machine {machine_id} not found")
    return machine


def _require_owner(user: User, machine: Machine) -> None:
    if user.role != Role.admin and machine.owner_id != user.id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only the machine's owner or an admin may change it"
        )


@router.get("", response_model=list[MachinePublic])
async def list_machines(session: SessionDep, user: CurrentUser) -> list[MachinePublic]:
    """Machines of the user's projects (all for admins): owner, sharing, use and connection."""
    query = select(Machine).order_by(col(Machine.created_at))
    visible = await visible_project_ids(session, user)
    if visible is not None:
        query = query.where(
            (col(Machine.project_id).in_(visible)) | (col(Machine.owner_id) == user.id)
        )
    return [await _public(session, m) for m in (await session.exec(query)).all()]


@router.get("/{machine_id}", response_model=MachinePublic)
async def get_machine(
    machine_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> MachinePublic:
    return await _public(session, await _visible_machine(session, user, machine_id))


@router.put("/{machine_id}/sharing", response_model=MachinePublic)
async def set_sharing(
    machine_id: uuid.UUID, body: Sharing, session: SessionDep, user: CurrentUser
) -> MachinePublic:
    """The owner's rules: time slots in a named time zone, GPUs at once, GPU-hours per day."""
    machine = await _visible_machine(session, user, machine_id)
    _require_owner(user, machine)
    try:
        parse_sharing(body.timezone, body.slots, body.quota_gpus, body.quota_gpu_hours_per_day)
    except ValueError as exc:  # shaped as a validation error, like the model's own
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body"], "msg": str(exc), "type": "value_error"}],
        ) from None
    machine.timezone = body.timezone
    machine.slots = body.slots
    machine.quota_gpus = body.quota_gpus
    machine.quota_gpu_hours_per_day = body.quota_gpu_hours_per_day
    session.add(machine)
    await session.commit()
    return await _public(session, machine)


@router.post("/{machine_id}/revoke", response_model=MachinePublic)
async def revoke_machine(
    machine_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> MachinePublic:
    """Cut the machine off: its tunnel closes within INVENTIV_TUNNEL_SYNC_INTERVAL_S and its
    credential is refused from then on."""
    machine = await _visible_machine(session, user, machine_id)
    _require_owner(user, machine)
    if machine.revoked_at is None:
        machine.revoked_at = utcnow()
        session.add(machine)
        await session.commit()
    return await _public(session, machine)
