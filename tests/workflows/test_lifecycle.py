"""Instance lifecycle against a real Temporal server, PostgreSQL, Redis and local machines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from sqlmodel import select

from activities.providers.local.adapter import LocalCompute
from core.models import InstanceState, InstanceVolume
from core.progress import progress_percent
from core.redis_keys import ROUTING_REGISTRY
from core.settings import Settings
from core.states import is_legal_path
from core.tokens import agent_token, engine_api_key
from tests.factories import seed
from tests.workflows.helpers import actions, history, record_history, running_worker, wait_state
from workflows.client import create_instance, terminate_instance

S = InstanceState
SIM_FAST = {"model-load-delay-s": 0.2}


async def test_happy_path_provision_serve_terminate(
    settings: Settings, sessionmaker, temporal_client, redis_client: aioredis.Redis
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(
            session,
            engine_args={**SIM_FAST, "volumes": [{"size_gb": 5, "delete_on_terminate": True}]},
        )
    async with running_worker(settings, temporal_client):
        async with sessionmaker() as session:
            instance = await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
        ready = await wait_state(sessionmaker, instance.id, S.ready)
        assert progress_percent(await actions(sessionmaker, instance.id)) == 100
        assert ready.agent_integrity_ok is True

        # Routable: the gateway's registry has it, with an engine that answers.
        local = LocalCompute(settings)
        [machine_file] = local.machines.glob("*.json")
        assert machine_file.stat().st_mode & 0o077 == 0, "the record holds the agent token"
        entry = json.loads(await redis_client.hget(ROUTING_REGISTRY, str(instance.id)))
        assert entry["model"] == "test-model"
        # The engine is the instance's own: without its key (or with another instance's) it
        # refuses, as vLLM's --api-key does; warmup and the agent's probes sent the key.
        chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        key = engine_api_key(settings.require("secret_key"), str(instance.id))
        other = engine_api_key(settings.require("secret_key"), str(uuid.uuid4()))
        async with httpx.AsyncClient() as http:
            url = f"{entry['engine_url']}/v1/chat/completions"
            stranger = await http.post(url, json=chat)
            wrong = await http.post(url, json=chat, headers={"Authorization": f"Bearer {other}"})
            r = await http.post(url, json=chat, headers={"Authorization": f"Bearer {key}"})
            info = await http.get(
                f"{entry['agent_url']}/info",
                headers={
                    "Authorization": f"Bearer {agent_token(settings.require('secret_key'), str(instance.id))}"
                },
            )
        assert stranger.status_code == 401 and wrong.status_code == 401
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
        # Handed over in the engine's environment: not on its command line, not in /info.
        assert info.status_code == 200 and key not in info.text
        assert key not in " ".join(info.json()["engine"]["command"])
        assert key not in Path(f"/proc/{info.json()['engine']['pid']}/cmdline").read_text()

        await terminate_instance(temporal_client, instance.workflow_id)
        done = await wait_state(sessionmaker, instance.id, S.terminated)
        assert done.termination_reason == "user_request"
        assert await redis_client.hget(ROUTING_REGISTRY, str(instance.id)) is None
        await record_history(temporal_client, instance.workflow_id, "happy_path")
        events = await temporal_client.get_workflow_handle(instance.workflow_id).fetch_history()
        assert key not in events.to_json(), "the engine key reached workflow history"

    path = await history(sessionmaker, instance.id)
    assert path == [S.provisioning, S.booting, S.ready, S.draining, S.terminating, S.terminated]
    assert is_legal_path(path)
    steps = [a.step for a in await actions(sessionmaker, instance.id) if a.status == "succeeded"]
    for step in ("request_created", "provider_create", "provider_start", "ip_assigned",
                 "agent_installed", "engine_http_up", "model_loaded", "warmup",
                 "health_check", "ready", "drain", "discover_volumes", "delete_server",
                 "confirm_gone"):  # fmt: skip
        assert step in steps, f"{step} missing from {steps}"
    assert steps.count("delete_volume") == 2  # boot volume + the data volume
    async with sessionmaker() as session:
        volumes = (await session.exec(select(InstanceVolume))).all()
    assert {v.state for v in volumes} == {"deleted"}
    local = LocalCompute(settings)
    assert await local.list_tagged() == [] and await local.list_tagged_volumes() == []
