"""A deployment whose context cannot fit its GPUs is refused when saved, before any machine
boots only for vLLM to exit; an unset max-model-len is chosen and shown."""

from __future__ import annotations

import re
from typing import Any

import httpx

from core.models import InstanceType
from tests.api.conftest import Tenant

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


async def _l4(sessionmaker: Any, t: Tenant) -> str:
    async with sessionmaker() as session:
        itype = InstanceType(
            provider_id=t.provider.id, name="L4-1-24G", gpu_model="L4", gpu_count=1,
            gpu_memory_gb=24,
        )  # fmt: skip
        session.add(itype)
        await session.commit()
        return str(itype.id)


def _body(t: Tenant, instance_type_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "project_id": str(t.project.id),
        "name": "llama-8b",
        "model": LLAMA_8B,
        "served_name": "llama-8b",
        "flavor": "nvidia-cuda12",
        "provider_id": str(t.provider.id),
        "instance_type_id": instance_type_id,
        "min_instances": 0,
        "max_instances": 1,
    } | overrides


async def test_max_model_len_checked_against_gpu_memory(
    client: httpx.AsyncClient, sessionmaker: Any, alice: Tenant
) -> None:
    h = alice.headers
    l4 = await _l4(sessionmaker, alice)
    # Its native 128k context on one 24 GiB L4: refused, naming the flag and what fits.
    refused = await client.post(
        "/api/v1/deployments",
        json=_body(alice, l4, engine_args={"max-model-len": 131072}),
        headers=h,
    )
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["detail"]  # a validation error naming the field
    assert error["loc"] == ["body", "engine_args", "max-model-len"]
    detail = error["msg"]
    assert "max-model-len 131072 does not fit" in detail, detail
    found = re.search(r"at most (\d+) tokens", detail)
    assert found, detail
    fits = int(found.group(1))
    assert 16 <= fits < 131072

    # Unset: the platform chooses what fits and says so; the stored flags stay the user's.
    chosen = await client.post("/api/v1/deployments", json=_body(alice, l4), headers=h)
    assert chosen.status_code == 201, chosen.text
    assert chosen.json()["effective_engine_args"]["max-model-len"] == fits
    assert "max-model-len" not in chosen.json()["engine_args"]

    # Exactly what fits is accepted; raising it later is refused the same way.
    patched = await client.patch(
        f"/api/v1/deployments/{chosen.json()['id']}",
        json={"engine_args": {"max-model-len": fits}},
        headers=h,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["effective_engine_args"] == {"max-model-len": fits}
    raised = await client.patch(
        f"/api/v1/deployments/{chosen.json()['id']}",
        json={"engine_args": {"max-model-len": fits + 16}},
        headers=h,
    )
    assert (
        raised.status_code == 422 and f"at most {fits} tokens" in raised.json()["detail"][0]["msg"]
    )

    # Weights that cannot fit at all are refused whatever the context.
    too_big = await client.post(
        "/api/v1/deployments",
        json=_body(alice, l4, name="llama-70b", served_name="llama-70b",
                   model="meta-llama/Llama-3.1-70B-Instruct"),
        headers=h,
    )  # fmt: skip
    assert too_big.status_code == 422 and "weights alone" in too_big.json()["detail"][0]["msg"]
    assert too_big.json()["detail"][0]["loc"] == ["body", "model"]
