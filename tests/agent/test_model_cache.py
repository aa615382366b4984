"""Model download and cache against a local hub-compatible HTTP server and moto's S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi import FastAPI, Header, Response
from fastapi.responses import StreamingResponse
from moto.server import ThreadedMotoServer

from agent.model_cache import MANIFEST, ModelCache, ModelDownloadError
from agent.settings import AgentSettings
from core.embedded import free_port
from tests.agent.helpers import get_json, running_agent, serving, wait_for

MODEL = "acme/tiny-llm"
FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/tokenizer.json": b'{"version": "1.0"}' * 50,
}
LFS = {"model.safetensors"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeHub:
    """Serves FILES the way huggingface.co does: a tree listing with sizes and digests."""

    requests: Counter[str] = field(default_factory=Counter)
    short_responses: int = 0  # this many downloads stop at half the file
    corrupt: bool = False
    chunk_delay_s: float = 0.0  # slow transfers, to watch the progress
    dropped_connections: int = 0  # this many downloads break off half-way
    ranges: list[str | None] = field(default_factory=list)  # Range header of each download

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/models/{org}/{name}/tree/{revision}")
        async def tree(org: str, name: str, revision: str) -> Any:
            if f"{org}/{name}" != MODEL:
                return Response(status_code=404)
            return [{"type": "directory", "path": "tokenizer", "size": 0}] + [
                {
                    "type": "file",
                    "path": path,
                    "size": len(data),
                    "oid": git_blob_sha1(data),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    if path in LFS
                    else None,
                }
                for path, data in FILES.items()
            ]

        @app.get("/{org}/{name}/resolve/{revision}/{path:path}")
        async def resolve(
            org: str, name: str, revision: str, path: str, range: str | None = Header(None)
        ) -> Response:
            self.requests[path] += 1
            self.ranges.append(range)
            data = FILES[path]
            if range:  # "bytes=N-", what a resuming client asks for
                offset = int(range.removeprefix("bytes=").rstrip("-"))
                headers = {"Content-Range": f"bytes {offset}-{len(data) - 1}/{len(data)}"}
                return Response(data[offset:], status_code=206, headers=headers)
            if self.dropped_connections > 0:
                self.dropped_connections -= 1
                return StreamingResponse(self._then_drop(data[: len(data) // 2]))
            if self.short_responses > 0:
                self.short_responses -= 1
                data = data[: len(data) // 2]
            elif self.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if self.chunk_delay_s:
                return StreamingResponse(self._slowly(data), media_type="application/octet-stream")
            return Response(data, media_type="application/octet-stream")

        return app

    async def _then_drop(self, data: bytes) -> AsyncIterator[bytes]:
        yield data
        raise ConnectionResetError("the hub dropped the connection")

    async def _slowly(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 32768):
            await asyncio.sleep(self.chunk_delay_s)
            yield data[start : start + 32768]


@pytest.fixture
async def hub() -> AsyncIterator[tuple[FakeHub, str]]:
    fake = FakeHub()
    async with serving(fake.app()) as url:
        yield fake, url


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def cache_settings(tmp_path: Path, hub_url: str, **extra: Any) -> AgentSettings:
    return AgentSettings(
        model=MODEL, model_cache_dir=tmp_path / "cache", hf_endpoint=hub_url, **extra
    )


def cached_bytes(path: str | Path) -> dict[str, bytes]:
    root = Path(path)
    return {name: (root / name).read_bytes() for name in FILES}


async def test_downloads_from_the_hub_then_serves_from_the_cache(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    cache = ModelCache(cache_settings(tmp_path, url))
    folder = await cache.ensure()
    assert await asyncio.to_thread(cached_bytes, folder) == FILES
    assert cache.progress.state == "done" and cache.progress.source == "hub"
    assert cache.progress.bytes_done == cache.progress.bytes_total == sum(map(len, FILES.values()))
    assert cache.progress.files_done == 3

    again = ModelCache(cache_settings(tmp_path, url))
    assert await again.ensure() == folder
    assert again.progress.source == "cache"
    assert sum(fake.requests.values()) == 3  # nothing downloaded twice


async def test_progress_is_reported_while_downloading(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    fake.chunk_delay_s = 0.05
    cache = ModelCache(cache_settings(tmp_path, url))
    download = asyncio.create_task(cache.ensure())

    async def midway() -> bool:
        progress = cache.progress
        return progress.state == "downloading" and 0 < progress.bytes_done < (
            progress.bytes_total or 0
        )

    await wait_for(midway, 10, "a partial progress report")
    assert cache.progress.source == "hub" and cache.progress.files_total == 3
    await download
    assert cache.progress.state == "done"


async def test_a_truncated_cached_file_is_detected_and_downloaded_again(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    folder = Path(await ModelCache(cache_settings(tmp_path, url)).ensure())
    weights = folder / "model.safetensors"
    await asyncio.to_thread(weights.write_bytes, FILES["model.safetensors"][:1000])

    cache = ModelCache(cache_settings(tmp_path, url))
    await cache.ensure()
    assert cache.progress.source == "hub"
    assert await asyncio.to_thread(cached_bytes, folder) == FILES
    assert fake.requests["model.safetensors"] == 2 and fake.requests["config.json"] == 1


@pytest.mark.parametrize("failure", ["short_responses", "dropped_connections"])
async def test_an_interrupted_download_resumes_where_it_stopped(
    tmp_path: Path, hub: tuple[FakeHub, str], failure: str
) -> None:
    fake, url = hub
    setattr(fake, failure, 1)  # the first file's first transfer stops half-way
    folder = await ModelCache(cache_settings(tmp_path, url)).ensure()
    assert await asyncio.to_thread(cached_bytes, folder) == FILES
    first = next(iter(FILES))
    assert fake.requests[first] == 2
    assert fake.ranges[:2] == [None, f"bytes={len(FILES[first]) // 2}-"]


async def test_a_partial_file_left_by_a_previous_run_is_resumed(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    weights = tmp_path / "cache" / "acme--tiny-llm" / "model.safetensors.partial"
    weights.parent.mkdir(parents=True)
    await asyncio.to_thread(weights.write_bytes, FILES["model.safetensors"][:100_000])
    folder = await ModelCache(cache_settings(tmp_path, url)).ensure()
    assert await asyncio.to_thread(cached_bytes, folder) == FILES
    assert "bytes=100000-" in fake.ranges and not weights.exists()


async def test_a_corrupt_download_is_never_served(tmp_path: Path, hub: tuple[FakeHub, str]) -> None:
    fake, url = hub
    fake.corrupt = True
    cache = ModelCache(cache_settings(tmp_path, url, download_attempts=2))
    with pytest.raises(ModelDownloadError, match=r"git sha1|sha256"):
        await cache.ensure()
    assert cache.progress.state == "failed" and cache.progress.error
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []  # no file in place, no .partial, no manifest


async def test_an_unknown_model_fails_with_a_clear_error(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    _, url = hub
    settings = cache_settings(tmp_path, url)
    settings.model = "acme/missing"
    with pytest.raises(ModelDownloadError, match="HTTP 404 for acme/missing"):
        await ModelCache(settings).ensure()


async def test_the_s3_prefix_is_tried_before_the_hub(
    tmp_path: Path, hub: tuple[FakeHub, str], s3: str
) -> None:
    fake, url = hub

    def upload() -> None:
        client = boto3.client("s3", endpoint_url=s3)
        client.create_bucket(Bucket="models")
        for path, data in FILES.items():
            client.put_object(Bucket="models", Key=f"mirror/{MODEL}/{path}", Body=data)

    await asyncio.to_thread(upload)
    # an earlier run stopped half-way through the weights: S3 resumes them with a range read
    partial = tmp_path / "cache" / "acme--tiny-llm" / "model.safetensors.partial"
    partial.parent.mkdir(parents=True)
    await asyncio.to_thread(partial.write_bytes, FILES["model.safetensors"][:123_456])
    cache = ModelCache(
        cache_settings(tmp_path, url, model_s3_prefix="s3://models/mirror", s3_endpoint_url=s3)
    )
    folder = await cache.ensure()
    assert cache.progress.source == "s3"
    assert await asyncio.to_thread(cached_bytes, folder) == FILES
    assert sum(fake.requests.values()) == 0

    elsewhere = ModelCache(
        cache_settings(
            tmp_path / "other", url, model_s3_prefix="s3://models/empty", s3_endpoint_url=s3
        )
    )
    await elsewhere.ensure()
    assert elsewhere.progress.source == "hub"  # nothing under that prefix: the hub serves it


async def test_the_agent_retries_a_failed_download_and_says_why_meanwhile(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    fake.corrupt = True  # every transfer is corrupt until the hub is repaired
    async with running_agent(
        tmp_path,
        model=MODEL,
        model_cache_dir=tmp_path / "cache",
        hf_endpoint=url,
        download_attempts=1,
        restart_backoff_s=0.2,
    ) as agent:

        async def failing() -> dict | None:
            answer = await get_json(f"{agent.url}/readyz")
            return (
                answer[1] if answer and "model preparation failed" in answer[1]["reason"] else None
            )

        body = await wait_for(failing, 20, "the download failure to show")
        assert body["engine_state"] == "failed" and "sha1" in body["reason"]
        fake.corrupt = False

        async def ready() -> bool:
            answer = await get_json(f"{agent.url}/readyz")
            return answer is not None and answer[0] == 200

        await wait_for(ready, 30, "the retried download to succeed")


async def test_the_agent_downloads_the_model_then_serves_it_from_the_cache(
    tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    _, url = hub
    async with running_agent(
        tmp_path, model=MODEL, model_cache_dir=tmp_path / "cache", hf_endpoint=url
    ) as agent:

        async def ready() -> bool:
            answer = await get_json(f"{agent.url}/readyz")
            return answer is not None and answer[0] == 200

        await wait_for(ready, 30, "readiness")
        _, info = await get_json(f"{agent.url}/info") or (0, {})
    assert info["model_download"]["state"] == "done"
    assert info["model_download"]["bytes_done"] == sum(map(len, FILES.values()))
    local = str(tmp_path / "cache" / "acme--tiny-llm")
    assert info["engine"]["command"][3] == local  # the engine loads the cached copy
    assert info["served_name"] == MODEL
    assert (tmp_path / "cache" / "acme--tiny-llm" / MANIFEST).exists()
