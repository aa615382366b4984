"""Providers, their instance types and prices, and bare-metal hosts: admins only.

Kinds, their catalogues and capabilities come from the provider registry
(activities/providers/registry.py), which imports no cloud SDK: neither does this module. The
sync reads a kind's live catalogue through the worker (workflows/client.py `read_catalogue`).

Credentials never pass through here: provider credentials live in the environment
(INVENTIV_SCALEWAY_*, INVENTIV_AWS_*), a config holding anything that looks like one is refused,
and a bare-metal host's SSH key is stored encrypted (or as a path) and never returned.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import AfterValidator, BaseModel, Field, SecretStr, StringConstraints
from sqlmodel import col, func, select

from activities.providers.base import Capability, InvalidRequestError, ProviderUnavailableError
from activities.providers.registry import PROVIDERS, check_kind
from activities.providers.ssh.catalogue import BARE_METAL_TYPE
from activities.providers.ssh.keys import encrypt_private_key
from activities.providers.ssh.settings import SSHSettings
from api.deps import CurrentAdmin, SessionDep, SettingsDep, TemporalDep
from api.errors import ADMIN_ERRORS, DependencyUnavailableError
from api.validation import JsonObject, Name, PartialUpdate
from core.models import BareMetalHost, Deployment, InstanceType, Project, Provider
from workflows.client import OrchestratorUnavailableError, read_catalogue

providers = APIRouter(prefix="/providers", tags=["providers"], responses=ADMIN_ERRORS)

ShortName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Currency = Annotated[str, StringConstraints(pattern="^[A-Z]{3}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
SECRET_WORDS = ("secret", "password", "token", "access_key", "private_key", "credential", "apikey")


def _refuse_credentials(config: dict[str, Any], kind: str, path: str = "") -> None:
    """400 when a config key names a credential; the value is never echoed back."""
    for key, value in config.items():
        name = key.lower().replace("-", "_")
        if any(word in name.replace("_", "") or word in name for word in SECRET_WORDS):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"config key {path + key!r} looks like a credential: credentials come from the "
                f"environment (INVENTIV_{kind.upper()}_...), never from the database",
            )
        if isinstance(value, dict):
            _refuse_credentials(value, kind, f"{path}{key}.")


# ---------------------------------------------------------------- provider kinds

ProviderKind = Annotated[
    str,
    AfterValidator(check_kind),
    Field(description="A registered provider kind: GET /providers/kinds lists them"),
]


class ProviderKindPublic(BaseModel):
    kind: str
    title: str
    enabled: bool = Field(description="Whether this process can run it (SDK and settings)")
    reason: str | None = Field(description="Why it cannot, when it cannot")
    capabilities: list[Capability]


@providers.get("/kinds", response_model=list[ProviderKindPublic])
async def list_provider_kinds(
    admin: CurrentAdmin, settings: SettingsDep
) -> list[ProviderKindPublic]:
    """Every registered provider kind, whether its SDK and settings are present here, and why not."""
    kinds = []
    for spec in PROVIDERS.values():
        reason = spec.unavailable(settings)
        kinds.append(
            ProviderKindPublic(
                kind=spec.kind,
                title=spec.title,
                enabled=reason is None,
                reason=reason,
                capabilities=list(spec.capabilities),
            )
        )
    return kinds


# ---------------------------------------------------------------- providers


VolumePrice = Annotated[float, Field(ge=0, le=1e6, description="volume cost per GB-month")]


class ProviderCreate(BaseModel):
    name: ShortName
    kind: ProviderKind
    enabled: bool = True
    config: JsonObject = Field(default_factory=dict)
    volume_price_per_gb_month: VolumePrice = 0
    volume_currency: Currency = "EUR"


class ProviderUpdate(PartialUpdate):
    name: ShortName | None = None
    enabled: bool | None = None
    config: JsonObject | None = None
    volume_price_per_gb_month: VolumePrice | None = None
    volume_currency: Currency | None = None


class ProviderPublic(BaseModel):
    id: uuid.UUID
    name: str
    kind: str
    enabled: bool
    config: dict[str, Any]
    volume_price_per_gb_month: float
    volume_currency: str
    created_at: datetime
    instance_types: int


async def _provider(session: SessionDep, provider_id: uuid.UUID) -> Provider:
    provider = await session.get(Provider, provider_id)
    if provider is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"provider {provider_id} not found")
    return provider


async def _public(session: SessionDep, provider: Provider) -> ProviderPublic:
    count = await session.scalar(
        select(func.count()).where(col(InstanceType.provider_id) == provider.id)
    )
    return ProviderPublic(**provider.model_dump(), instance_types=count or 0)


async def _name_free(session: SessionDep, name: str, but: uuid.UUID | None = None) -> None:
    query = select(Provider.id).where(Provider.name == name)
    if but is not None:
        query = query.where(Provider.id != but)
    if (await session.exec(query)).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a provider named {name!r} exists")


@providers.get("", response_model=list[ProviderPublic])
async def list_providers(session: SessionDep, admin: CurrentAdmin) -> list[ProviderPublic]:
    rows = (await session.exec(select(Provider).order_by(col(Provider.name)))).all()
    return [await _public(session, p) for p in rows]


@providers.post("", response_model=ProviderPublic, status_code=status.HTTP_201_CREATED)
async def create_provider(
    body: ProviderCreate, session: SessionDep, admin: CurrentAdmin
) -> ProviderPublic:
    _refuse_credentials(body.config, body.kind)
    await _name_free(session, body.name)
    provider = Provider(**body.model_dump())
    session.add(provider)
    await session.commit()
    return await _public(session, provider)


@providers.get("/{provider_id}", response_model=ProviderPublic)
async def get_provider(
    provider_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> ProviderPublic:
    return await _public(session, await _provider(session, provider_id))


@providers.patch("/{provider_id}", response_model=ProviderPublic)
async def update_provider(
    provider_id: uuid.UUID, body: ProviderUpdate, session: SessionDep, admin: CurrentAdmin
) -> ProviderPublic:
    provider = await _provider(session, provider_id)
    if body.config is not None:
        _refuse_credentials(body.config, provider.kind)
    if body.name is not None:
        await _name_free(session, body.name, but=provider.id)
    for key, value in body.model_dump(exclude_unset=True).items():
        setattr(provider, key, value)
    session.add(provider)
    await session.commit()
    return await _public(session, provider)


@providers.delete("/{provider_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_provider(
    provider_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> Response:
    provider = await _provider(session, provider_id)
    used = await session.scalar(
        select(func.count()).where(col(Deployment.provider_id) == provider.id)
    )
    if used:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"provider {provider.name!r} is used by {used} deployment(s); disable it instead",
        )
    await session.delete(provider)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- instance types and prices


class InstanceTypeBody(BaseModel):
    gpu_model: ShortName | None = None
    gpu_count: int = Field(default=0, ge=0, le=64)
    gpu_memory_gb: float = Field(default=0, ge=0, le=4096)
    vcpus: int = Field(default=0, ge=0, le=4096)
    ram_gb: float = Field(default=0, ge=0, le=65536)
    price_per_hour: float = Field(default=0, ge=0, le=100_000)
    currency: Currency = "EUR"
    zones: list[ShortName] = Field(default_factory=list)


class InstanceTypeCreate(InstanceTypeBody):
    name: ShortName


class InstanceTypeUpdate(PartialUpdate):
    gpu_model: ShortName | None = None
    gpu_count: int | None = Field(default=None, ge=0, le=64)
    gpu_memory_gb: float | None = Field(default=None, ge=0, le=4096)
    vcpus: int | None = Field(default=None, ge=0, le=4096)
    ram_gb: float | None = Field(default=None, ge=0, le=65536)
    price_per_hour: float | None = Field(default=None, ge=0, le=100_000)
    currency: Currency | None = None
    zones: list[ShortName] | None = None

    nullable = frozenset({"gpu_model"})


class InstanceTypePublic(InstanceTypeCreate):
    id: uuid.UUID
    provider_id: uuid.UUID
    price_source: str = Field(
        description="manual (set by an admin), static (the adapter's built-in table) or "
        "provider-api (the provider's catalogue)"
    )


async def _instance_type(
    session: SessionDep, provider_id: uuid.UUID, type_id: uuid.UUID
) -> InstanceType:
    itype = await session.get(InstanceType, type_id)
    if itype is None or itype.provider_id != provider_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance type {type_id} not found")
    return itype


async def _types(session: SessionDep, provider_id: uuid.UUID) -> list[InstanceTypePublic]:
    rows = await session.exec(
        select(InstanceType)
        .where(col(InstanceType.provider_id) == provider_id)
        .order_by(col(InstanceType.price_per_hour), col(InstanceType.name))
    )
    return [InstanceTypePublic(**row.model_dump()) for row in rows.all()]


@providers.get("/{provider_id}/instance-types", response_model=list[InstanceTypePublic])
async def list_instance_types(
    provider_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> list[InstanceTypePublic]:
    await _provider(session, provider_id)
    return await _types(session, provider_id)


@providers.post(
    "/{provider_id}/instance-types",
    response_model=InstanceTypePublic,
    status_code=status.HTTP_201_CREATED,
)
async def create_instance_type(
    provider_id: uuid.UUID, body: InstanceTypeCreate, session: SessionDep, admin: CurrentAdmin
) -> InstanceTypePublic:
    await _provider(session, provider_id)
    taken = await session.exec(
        select(InstanceType.id).where(
            col(InstanceType.provider_id) == provider_id, InstanceType.name == body.name
        )
    )
    if taken.first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"instance type {body.name!r} exists")
    itype = InstanceType(provider_id=provider_id, **body.model_dump())
    session.add(itype)
    await session.commit()
    return InstanceTypePublic(**itype.model_dump())


@providers.post("/{provider_id}/instance-types/sync", response_model=list[InstanceTypePublic])
async def sync_instance_types(
    provider_id: uuid.UUID,
    session: SessionDep,
    admin: CurrentAdmin,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> list[InstanceTypePublic]:
    """Read the kind's catalogue in the worker (the provider's own API where it has one: its
    prices say `provider-api`; else, or where it cannot be read, the static table: `static`),
    add the types this provider lacks and refresh the prices of the others, except those an
    admin set (`manual`), which are never overwritten. A type the provider's API could not be
    read for this time keeps a price it read before. 503 when no worker answers in time."""
    provider = await _provider(session, provider_id)
    if provider.kind not in PROVIDERS:  # a row written before its kind was unregistered
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"provider kind {provider.kind!r} is no longer registered"
        )
    try:
        catalogue = await read_catalogue(temporal, settings.task_queue, provider.kind)
    except OrchestratorUnavailableError as exc:
        raise DependencyUnavailableError("temporal", str(exc)) from None
    rows = await session.exec(
        select(InstanceType).where(col(InstanceType.provider_id) == provider_id)
    )
    existing = {t.name: t for t in rows.all()}
    for offer in catalogue.offers:
        row = existing.get(offer.name)
        if row is None:
            session.add(InstanceType(provider_id=provider_id, **offer.__dict__))
        elif row.price_source != "manual" and not (
            row.price_source == "provider-api" and offer.price_source != "provider-api"
        ):
            row.price_per_hour = offer.price_per_hour
            row.currency = offer.currency
            row.price_source = offer.price_source
            session.add(row)
    await session.commit()
    return await _types(session, provider_id)


@providers.patch("/{provider_id}/instance-types/{type_id}", response_model=InstanceTypePublic)
async def update_instance_type(
    provider_id: uuid.UUID,
    type_id: uuid.UUID,
    body: InstanceTypeUpdate,
    session: SessionDep,
    admin: CurrentAdmin,
) -> InstanceTypePublic:
    itype = await _instance_type(session, provider_id, type_id)
    changes = body.model_dump(exclude_unset=True)
    for key, value in changes.items():
        setattr(itype, key, value)
    if "price_per_hour" in changes or "currency" in changes:
        itype.price_source = "manual"
    session.add(itype)
    await session.commit()
    return InstanceTypePublic(**itype.model_dump())


@providers.delete("/{provider_id}/instance-types/{type_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_instance_type(
    provider_id: uuid.UUID, type_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> Response:
    itype = await _instance_type(session, provider_id, type_id)
    used = await session.scalar(
        select(func.count()).where(col(Deployment.instance_type_id) == itype.id)
    )
    if used:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"instance type {itype.name!r} is used by {used} deployment(s)",
        )
    await session.delete(itype)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- bare-metal hosts

hosts = APIRouter(prefix="/providers/bare-metal-hosts", tags=["providers"], responses=ADMIN_ERRORS)


class HostBody(BaseModel):
    address: ShortName
    port: Port = 22
    user: ShortName
    host_key: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description='The host\'s public key ("ssh-ed25519 AAAA..."): pinned'
    )
    instance_type: ShortName = BARE_METAL_TYPE
    gpu_inventory: list[JsonObject] = Field(default_factory=list)
    python: ShortName = "python3"
    agent_port: Port = 8090
    engine_port: Port = 8000
    project_id: uuid.UUID | None = None
    enabled: bool = True


class HostCreate(HostBody):
    name: Name
    private_key: SecretStr | None = Field(
        default=None, description="An unencrypted SSH private key; stored encrypted"
    )
    private_key_path: ShortName | None = Field(
        default=None, description="Or: where the key lives on the control plane"
    )


class HostUpdate(PartialUpdate):
    address: ShortName | None = None
    port: Port | None = None
    user: ShortName | None = None
    host_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    gpu_inventory: list[JsonObject] | None = None
    python: ShortName | None = None
    agent_port: Port | None = None
    engine_port: Port | None = None
    project_id: uuid.UUID | None = None
    enabled: bool | None = None

    nullable = frozenset({"host_key", "project_id"})


class HostPublic(HostBody):
    id: uuid.UUID
    name: str
    key_source: Literal["file", "encrypted"]
    key_path: str | None
    claimed_by: uuid.UUID | None
    claimed_at: datetime | None
    created_at: datetime


def _host_public(host: BareMetalHost) -> HostPublic:
    scheme, _, value = host.private_key_ref.partition(":")
    data = host.model_dump(exclude={"private_key_ref"})
    return HostPublic(
        **data,
        key_source="file" if scheme == "file" else "encrypted",
        key_path=value if scheme == "file" else None,
    )


async def _host(session: SessionDep, host_id: uuid.UUID) -> BareMetalHost:
    host = await session.get(BareMetalHost, host_id)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"bare-metal host {host_id} not found")
    return host


async def _project_exists(session: SessionDep, project_id: uuid.UUID | None) -> None:
    if project_id is not None and await session.get(Project, project_id) is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"no project {project_id}")


@hosts.get("", response_model=list[HostPublic])
async def list_hosts(session: SessionDep, admin: CurrentAdmin) -> list[HostPublic]:
    rows = await session.exec(select(BareMetalHost).order_by(col(BareMetalHost.name)))
    return [_host_public(h) for h in rows.all()]


@hosts.post("", response_model=HostPublic, status_code=status.HTTP_201_CREATED)
async def create_host(body: HostCreate, session: SessionDep, admin: CurrentAdmin) -> HostPublic:
    if (body.private_key is None) == (body.private_key_path is None):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "give exactly one of private_key, private_key_path",
        )
    if body.private_key is not None:
        try:
            ref = encrypt_private_key(body.private_key.get_secret_value(), SSHSettings())
        except InvalidRequestError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except ProviderUnavailableError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    else:
        ref = f"file:{body.private_key_path}"
    await _project_exists(session, body.project_id)
    if (
        await session.exec(select(BareMetalHost.id).where(BareMetalHost.name == body.name))
    ).first():
        raise HTTPException(status.HTTP_409_CONFLICT, f"a host named {body.name!r} exists")
    host = BareMetalHost(
        **body.model_dump(exclude={"private_key", "private_key_path"}), private_key_ref=ref
    )
    session.add(host)
    await session.commit()
    return _host_public(host)


@hosts.patch("/{host_id}", response_model=HostPublic)
async def update_host(
    host_id: uuid.UUID, body: HostUpdate, session: SessionDep, admin: CurrentAdmin
) -> HostPublic:
    host = await _host(session, host_id)
    await _project_exists(session, body.project_id)
    for key, value in body.model_dump(exclude_unset=True).items():
        setattr(host, key, value)
    session.add(host)
    await session.commit()
    return _host_public(host)


@hosts.delete("/{host_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_host(host_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> Response:
    host = await _host(session, host_id)
    if host.claimed_by is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"host {host.name!r} is in use by instance {host.claimed_by}; terminate it first",
        )
    await session.delete(host)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Hosts first: "/providers/bare-metal-hosts" must not be read as a provider id.
router = APIRouter()
router.include_router(hosts)
router.include_router(providers)
