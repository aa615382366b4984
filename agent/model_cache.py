"""Model download and cache on the machine's volume: S3 prefix first, then the Hugging Face hub.

Each file is written to `<name>.partial` (an interrupted transfer resumes there with a range
request), checked against the size and digest its source announces, then renamed into place; a manifest listing every file with its size and digest is
written last. A cached model is used only when every file in its manifest is present with the
right size (and digest, unless VERIFY_CACHE=false); a truncated or corrupt file is downloaded
again, never served. The work is blocking I/O, so it runs in a thread; `progress` is read by
/info and heartbeats while it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from agent.settings import AgentSettings
from core.wire import ModelDownload

log = logging.getLogger("agent.model_cache")

MANIFEST = ".inventiv-manifest.json"
_CHUNK = 1 << 20


class ModelDownloadError(Exception):
    pass


@dataclass
class RemoteFile:
    path: str  # relative, POSIX
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None  # the hub's blob id for files not stored in LFS
    md5: str | None = None  # S3 ETag of a single-part upload


def _safe_relative(path: str) -> str:
    """A remote path that stays inside the model folder."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise ModelDownloadError(f"refusing unsafe file path from the source: {path!r}")
    return str(PurePosixPath(*parts))


class _Digests:
    def __init__(self, remote: RemoteFile) -> None:
        self.sha256 = hashlib.sha256() if remote.sha256 else None
        self.md5 = hashlib.md5(usedforsecurity=False) if remote.md5 else None
        self.git = hashlib.sha1(usedforsecurity=False) if remote.git_sha1 else None
        if self.git is not None and remote.size is not None:
            self.git.update(f"blob {remote.size}\0".encode())

    def update(self, chunk: bytes) -> None:
        for digest in (self.sha256, self.md5, self.git):
            if digest is not None:
                digest.update(chunk)

    def mismatch(self, remote: RemoteFile) -> str | None:
        for name, digest, expected in (
            ("sha256", self.sha256, remote.sha256),
            ("md5", self.md5, remote.md5),
            ("git sha1", self.git, remote.git_sha1),
        ):
            if digest is not None and digest.hexdigest() != expected:
                return f"{name} {digest.hexdigest()} != expected {expected}"
        return None


def _file_problem(path: Path, remote: RemoteFile, verify_digest: bool) -> str | None:
    """Why a local copy cannot be served, or None when it is whole."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size} != expected {remote.size} (truncated or partial)"
    if verify_digest:
        digests = _Digests(remote)
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digests.update(chunk)
        return digests.mismatch(remote)
    return None


class ModelCache:
    def __init__(self, settings: AgentSettings) -> None:
        assert settings.model_cache_dir is not None
        self.settings = settings
        self.model = settings.model
        self.model_dir = settings.model_cache_dir / self.model.replace("/", "--")
        self.progress = ModelDownload()

    async def ensure(self) -> str:
        """The local folder holding a whole copy of the model (downloaded when needed)."""
        return await asyncio.to_thread(self._ensure)

    # ------------------------------------------------------------ blocking part (thread)

    def _ensure(self) -> str:
        if Path(self.model).is_dir():
            self.progress = ModelDownload(state="done", source="local")
            return self.model
        cached = self._cached_files()
        if cached is not None:
            problems = self._problems(cached)
            if not problems:
                total = sum(f.size or 0 for f in cached)
                self.progress = ModelDownload(
                    state="done", source="cache", bytes_done=total, bytes_total=total,
                    files_done=len(cached), files_total=len(cached),
                )  # fmt: skip
                log.info("model %s found whole in %s", self.model, self.model_dir)
                return str(self.model_dir)
            for path, problem in problems.items():
                log.warning("cached %s is unusable (%s): downloading it again", path, problem)
        errors: list[str] = []
        if self.settings.model_s3_prefix:
            try:
                self._download("s3", self._s3_listing(), self._s3_fetch)
                return str(self.model_dir)
            except Exception as exc:
                errors.append(f"S3: {exc}")
                log.warning("model %s not taken from S3 (%s); trying the hub", self.model, exc)
        try:
            self._download("hub", self._hub_listing(), self._hub_fetch)
        except Exception as exc:
            errors.append(f"hub: {exc}")
            self.progress.state = "failed"
            self.progress.error = "; ".join(errors)
            raise ModelDownloadError(self.progress.error) from exc
        return str(self.model_dir)

    def _cached_files(self) -> list[RemoteFile] | None:
        try:
            entries = json.loads((self.model_dir / MANIFEST).read_text())["files"]
            return [RemoteFile(**entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _problems(self, files: list[RemoteFile]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for remote in files:
            problem = _file_problem(
                self.model_dir / remote.path, remote, self.settings.verify_cache
            )
            if problem:
                problems[remote.path] = problem
        return problems

    def _download(self, source: str, files: list[RemoteFile], fetch: Any) -> None:
        if not files:
            raise ModelDownloadError(f"no files for {self.model}")
        self.progress = ModelDownload(
            state="downloading", source=source, files_total=len(files),
            bytes_total=sum(f.size or 0 for f in files),
        )  # fmt: skip
        (self.model_dir / MANIFEST).unlink(missing_ok=True)
        for remote in files:
            target = self.model_dir / remote.path
            if _file_problem(target, remote, verify_digest=True) is None:
                self.progress.bytes_done += remote.size or target.stat().st_size
            else:
                self._download_file(remote, target, fetch)
            self.progress.files_done += 1
        self.model_dir.mkdir(parents=True, exist_ok=True)
        (self.model_dir / MANIFEST).write_text(
            json.dumps({"model": self.model, "source": source, "files": [asdict(f) for f in files]})
        )
        self.progress.state = "done"
        log.info("model %s downloaded from %s into %s", self.model, source, self.model_dir)

    def _download_file(self, remote: RemoteFile, target: Path, fetch: Any) -> None:
        """Downloads into `<name>.partial`, resuming what a failed try (or a previous run of the
        agent) left there; only a whole, verified file is renamed into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        done_before = self.progress.bytes_done
        problem = "not tried"
        for attempt in range(1, self.settings.download_attempts + 1):
            offset = partial.stat().st_size if partial.exists() else 0
            if remote.size is not None and offset > remote.size:
                offset = 0
            digests = _Digests(remote)
            if offset:
                with partial.open("rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        digests.update(chunk)
            written = offset
            self.progress.bytes_done = done_before + written
            try:
                with partial.open("ab" if offset else "wb") as handle:
                    for chunk in fetch(remote, offset):
                        handle.write(chunk)
                        digests.update(chunk)
                        written += len(chunk)
                        self.progress.bytes_done = done_before + written
            except Exception as exc:  # any failed transfer is retried from where it stopped
                problem = f"transfer failed after {written} bytes: {exc}"
            else:
                if remote.size is not None and written < remote.size:
                    problem = f"got {written} bytes of {remote.size}; resuming"
                elif remote.size is not None and written > remote.size:
                    problem = f"got {written} bytes, more than the {remote.size} announced"
                    partial.unlink()
                elif mismatch := digests.mismatch(remote):
                    problem = mismatch
                    partial.unlink()  # corrupt: the next try starts from zero
                else:
                    os.replace(partial, target)
                    return
            log.warning(
                "download of %s failed (attempt %d/%d): %s",
                remote.path, attempt, self.settings.download_attempts, problem,
            )  # fmt: skip
        partial.unlink(missing_ok=True)
        raise ModelDownloadError(f"{remote.path}: {problem}")

    # ------------------------------------------------------------ Hugging Face hub

    def _hub_headers(self) -> dict[str, str]:
        token = self.settings.hf_token.get_secret_value()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _hub_listing(self) -> list[RemoteFile]:
        endpoint = self.settings.hf_endpoint.rstrip("/")
        revision = quote(self.settings.model_revision, safe="")
        url = f"{endpoint}/api/models/{self.model}/tree/{revision}"
        with httpx.Client(headers=self._hub_headers(), timeout=30, follow_redirects=True) as http:
            response = http.get(url, params={"recursive": "true"})
        if response.status_code in (401, 403, 404):
            raise ModelDownloadError(
                f"the hub answered HTTP {response.status_code} for {self.model}: unknown or "
                "gated model (set INVENTIV_AGENT_HF_TOKEN for gated ones)"
            )
        response.raise_for_status()
        files = []
        for entry in response.json():
            if entry.get("type") != "file":
                continue
            lfs = entry.get("lfs") or {}
            files.append(
                RemoteFile(
                    path=_safe_relative(entry["path"]),
                    size=int(entry["size"]),
                    sha256=lfs.get("oid") or lfs.get("sha256"),
                    git_sha1=None if lfs else entry.get("oid"),
                )
            )
        return files

    def _hub_fetch(self, remote: RemoteFile, offset: int) -> Any:
        endpoint = self.settings.hf_endpoint.rstrip("/")
        revision = quote(self.settings.model_revision, safe="")
        url = f"{endpoint}/{self.model}/resolve/{revision}/{quote(remote.path)}"
        headers = self._hub_headers()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with (
            httpx.Client(headers=headers, timeout=60, follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            response.raise_for_status()
            # a server that ignores Range sends the whole file: skip what is already here
            skip = offset if offset and response.status_code != 206 else 0
            for chunk in response.iter_bytes():  # as it arrives: a broken transfer keeps its part
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if chunk:
                    yield chunk

    # ------------------------------------------------------------ S3

    def _s3_location(self) -> tuple[str, str]:
        parts = urlsplit(self.settings.model_s3_prefix)
        if parts.scheme != "s3" or not parts.netloc:
            raise ModelDownloadError(
                f"MODEL_S3_PREFIX must look like s3://bucket/prefix, not {parts.geturl()!r}"
            )
        prefix = "/".join(p for p in (parts.path.strip("/"), self.model) if p)
        return parts.netloc, prefix + "/"

    def _s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url)

    def _s3_listing(self) -> list[RemoteFile]:
        bucket, prefix = self._s3_location()
        files = []
        for page in (
            self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            for item in page.get("Contents", []):
                etag = item.get("ETag", "").strip('"')
                files.append(
                    RemoteFile(
                        path=_safe_relative(item["Key"][len(prefix) :]),
                        size=int(item["Size"]),
                        md5=etag if etag and "-" not in etag else None,
                    )
                )
        if not files:
            raise ModelDownloadError(f"nothing under s3://{bucket}/{prefix}")
        return files

    def _s3_fetch(self, remote: RemoteFile, offset: int) -> Any:
        bucket, prefix = self._s3_location()
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        body = self._s3().get_object(Bucket=bucket, Key=prefix + remote.path, **ranged)["Body"]
        try:
            yield from body.iter_chunks(_CHUNK)
        finally:
            body.close()
