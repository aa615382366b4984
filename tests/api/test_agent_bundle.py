"""Machines download the agent from the API; what they get is the bundle the checksum names:
every file listed in its manifest, with the SHA-256 listed."""

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
        listed = archive.extractfile("MANIFEST.sha256")
        assert listed is not None
        manifest = listed.read()
        for line in manifest.decode().splitlines():
            digest, name = line.split("  ", 1)
            member = archive.extractfile(name)
            assert member is not None and hashlib.sha256(member.read()).hexdigest() == digest
    assert hashlib.sha256(manifest).hexdigest() == bundled_agent().checksum
    assert len(manifest.decode().splitlines()) == len(names) - 1  # every file but the manifest
    assert {"agent/__main__.py", "core/wire.py", "agent/bootstrap.sh"} <= names
    assert not any("__pycache__" in n for n in names)
    again = await client.get("/api/v1/agents/bundle")
    assert again.content == response.content  # built once, served as is
