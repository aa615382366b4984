"""Accounting: token usage read from the engine's answers, and what each finished request leaves
behind: Prometheus metrics, a request-log row (written in batches by gateway.logs), tokens
charged to the key's TPM window (flushed to Redis by a control loop)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import orjson

from gateway import metrics
from gateway.deployments import DeploymentMap
from gateway.logs import RequestLogWriter
from gateway.ratelimit import RateLimiter

if TYPE_CHECKING:
    from gateway.proxy import ProxyRequest

USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"(?<=\n\n)|(?<=\r\n\r\n)")


def count_usage(data: bytes, request: ProxyRequest) -> None:
    """Token counts of a complete JSON response, read without parsing the whole body."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return
    tail = data[at:]
    prompt = _PROMPT_TOKENS.search(tail)
    completion = _COMPLETION_TOKENS.search(tail)
    request.input_tokens = int(prompt.group(1)) if prompt else 0
    request.output_tokens = int(completion.group(1)) if completion else 0


def take_usage(events: bytes, keep: bool, request: ProxyRequest) -> bytes:
    """Read usage from the SSE events that carry it; drop the usage-only chunk unless `keep`."""
    kept: list[bytes] = []
    for event in _EVENT_END.split(events):
        if not event:
            continue
        if USAGE.search(event) is not None:
            payload = event.strip()
            if payload.startswith(b"data:"):
                payload = payload[5:].strip()
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                request.input_tokens = int(usage.get("prompt_tokens") or 0)
                request.output_tokens = int(usage.get("completion_tokens") or 0)
                if not keep and not chunk.get("choices"):
                    continue
        kept.append(event)
    return b"".join(kept)


class Accounting:
    def __init__(
        self, logs: RequestLogWriter, limiter: RateLimiter, deployments: DeploymentMap
    ) -> None:
        self.logs = logs
        self.limiter = limiter
        self.deployments = deployments
        self._pending_tokens: dict[str, int] = {}  # key id -> tokens not yet charged in Redis

    def finish(self, request: ProxyRequest) -> None:
        """Book a request that ended, however it ended (answered, refused, client gone)."""
        ended = time.perf_counter()
        latency = ended - request.started
        status = request.status or 500
        model_metrics = metrics.for_model(request.model)
        model_metrics.request(status)
        model_metrics.latency.observe(latency)
        ttft_ms = None
        first_chunk_at = request.first_chunk_at
        if first_chunk_at is not None:
            ttft = first_chunk_at - request.started
            ttft_ms = ttft * 1000
            model_metrics.ttft.observe(ttft)
            if request.output_tokens > 1 and ended > first_chunk_at:
                model_metrics.tokens_per_second.observe(
                    (request.output_tokens - 1) / (ended - first_chunk_at)
                )
        key = request.key
        tokens = request.input_tokens + request.output_tokens
        if tokens:
            model_metrics.input_tokens.inc(request.input_tokens)
            model_metrics.output_tokens.inc(request.output_tokens)
            if key.tpm_limit is not None:
                self._pending_tokens[key.id] = self._pending_tokens.get(key.id, 0) + tokens
        backend = request.backend
        if backend is not None:
            deployment_id: str | None = backend.info.deployment_id
        else:
            entry = self.deployments.first(request.model)
            deployment_id = entry.id if entry else None
        self.logs.add(
            (
                time.time(),
                key.id,
                key.project_id,
                deployment_id,
                backend.instance_id if backend else None,
                request.model,
                request.input_tokens,
                request.output_tokens,
                ttft_ms,
                latency * 1000,
                status,
                request.streamed,
            )
        )

    async def flush_tokens(self) -> None:
        """Charge the tokens of finished requests to their keys' TPM windows."""
        if not self._pending_tokens:
            return
        pending, self._pending_tokens = self._pending_tokens, {}
        for key_id, tokens in pending.items():
            await self.limiter.add_tokens(key_id, tokens)
