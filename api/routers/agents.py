"""Agent heartbeats: POST /api/v1/agents/heartbeat, authenticated with the instance's agent token.

A heartbeat refreshes the instance's liveness and agent identity in PostgreSQL, replaces its
latest load in Redis (read by the gateway and the autoscaler) and appends one metrics sample.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import statistics
import time
import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import FileResponse
from sqlmodel import col, update

from agent import identity as agent_identity
from api.deps import RedisDep, SessionDep, SettingsDep
from api.security import token_hash
from core.models import Instance, InstanceMetric, InstanceState
from core.redis_keys import INSTANCE_LOAD
from core.wire import AgentHeartbeat, HeartbeatAck, InstanceLoad

log = logging.getLogger("api.agents")

router = APIRouter(prefix="/agents", tags=["agents"])

_REFUSED = "unknown instance or wrong agent token"
_GONE = (
    InstanceState.terminating,
    InstanceState.terminated,
    InstanceState.archived,
    InstanceState.provider_deleted,
)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _sum(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


@router.post(
    "/heartbeat",
    response_model=HeartbeatAck,
    responses={401: {"description": _REFUSED}},
    summary="Agent heartbeat (Authorization: Bearer <agent token>)",
)
async def heartbeat(
    body: AgentHeartbeat,
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    authorization: str | None = Header(default=None),
) -> HeartbeatAck:
    client = request.client.host if request.client else "?"
    token = _bearer(authorization)
    try:
        instance_id = uuid.UUID(body.instance_id)
    except ValueError:
        instance_id = None
    instance = await session.get(Instance, instance_id) if instance_id else None
    expected = instance.agent_token_hash if instance else None
    if token is None or expected is None or not hmac.compare_digest(token_hash(token), expected):
        log.warning(
            "refused agent heartbeat for instance %r from %s: %s",
            body.instance_id,
            client,
            "no bearer token" if token is None else "unknown instance or wrong token",
        )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, _REFUSED, headers={"WWW-Authenticate": "Bearer"}
        )
    assert instance_id is not None and instance is not None
    integrity_ok = agent_identity.integrity_ok(
        body.agent_info.version, body.agent_info.checksum, settings.expected_agent_version
    )
    if instance.state in _GONE:
        # a machine still running after its termination was recorded: nothing of it may go back
        # into the load registry that routing and health checks read
        return HeartbeatAck(ok=False, integrity_ok=integrity_ok)
    if not integrity_ok and instance.agent_integrity_ok is not False:
        log.warning(
            "instance %s runs agent %r (checksum %r): not the expected agent",
            instance_id,
            body.agent_info.version,
            body.agent_info.checksum,
        )
    now = datetime.now(UTC)
    await session.exec(
        update(Instance)
        .where(col(Instance.id) == instance_id)
        .values(
            last_heartbeat_at=now,
            agent_version=body.agent_info.version[:32],
            agent_checksum=body.agent_info.checksum[:64],
            agent_integrity_ok=integrity_ok,
        )
    )
    gpus = body.gpus or []
    load = body.load
    # A machine whose agent sees no GPU but runs the simulator reports its modelled busy share.
    utilization = _mean([g.utilization_pct for g in gpus])
    if utilization is None:
        utilization = load.busy_pct
    session.add(
        InstanceMetric(
            instance_id=instance_id,
            at=now,
            gpu_utilization=utilization,
            gpu_memory_used_mb=_sum([g.memory_used_mb for g in gpus]),
            gpu_memory_total_mb=_sum([g.memory_total_mb for g in gpus]),
            gpu_temperature_c=max(
                (g.temperature_c for g in gpus if g.temperature_c is not None), default=None
            ),
            gpu_power_w=_sum([g.power_w for g in gpus]),
            cpu_percent=body.host.cpu_percent,
            ram_percent=body.host.ram_percent,
            requests_running=load.requests_running,
            requests_waiting=load.requests_waiting,
            kv_cache_usage=load.kv_cache_usage,
            data={
                "gpus": [g.model_dump() for g in body.gpus] if body.gpus is not None else None,
                "gpu_error": body.gpu_error,
                "disk_percent": body.host.disk_percent,
                "engine_state": body.engine_state,
                "engine_ready": body.engine_ready,
                "engine_restarts": body.engine_restarts,
                "load": load.model_dump(),
                "model_download": body.model_download.model_dump() if body.model_download else None,
            },
        )
    )
    await session.commit()
    latest = InstanceLoad(
        instance_id=str(instance_id),
        ts=time.time(),
        engine_ready=body.engine_ready,
        engine_state=body.engine_state,
        requests_running=load.requests_running,
        requests_waiting=load.requests_waiting,
        kv_cache_usage=load.kv_cache_usage,
        in_flight=load.in_flight,
        gpu_utilization=utilization,
        model_download=body.model_download,
    )
    await redis.hset(INSTANCE_LOAD, str(instance_id), latest.model_dump_json())
    return HeartbeatAck(integrity_ok=integrity_ok)


@router.get(
    "/bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}},
    summary="The agent bundle machines install (agent/ and core/wire.py, as .tar.gz)",
)
async def agent_bundle(settings: SettingsDep) -> FileResponse:
    """What `agent/bootstrap.sh` downloads from WORKER_AGENT_URL. Public: it is our code, not a
    secret; the machine verifies it against WORKER_AGENT_SHA256 before running it."""
    agent = agent_identity.bundled_agent()
    path = settings.data_path(
        "agent-bundles", f"agent-{agent.version}-{agent.checksum[:16]}.tar.gz"
    )
    if not path.exists():
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        await asyncio.to_thread(agent_identity.bundle, tmp)
        tmp.replace(path)
    return FileResponse(path, media_type="application/gzip", filename="inventiv-agent.tar.gz")
