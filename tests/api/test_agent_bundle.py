"""Machines download the agent from the API; what they get is the agent the checksum names."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx

from agent.identity import bundled_agent


async def test_bundle_holds_the_checksummed_agent(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/agents/bundle")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
        agent_py = archive.extractfile("agent/agent.py")
        assert agent_py is not None
        digest = hashlib.sha256(agent_py.read()).hexdigest()
    assert digest == bundled_agent().checksum
    assert {"agent/__main__.py", "core/wire.py", "agent/bootstrap.sh"} <= names
    assert not any("__pycache__" in n for n in names)
    again = await client.get("/api/v1/agents/bundle")
    assert again.content == response.content  # built once, served as is
