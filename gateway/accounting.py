"""Accounting: token usage read from the engine's answers, and what each finished request leaves
behind: Prometheus metrics, a request-log row (written in batches by gateway.logs) booked to the
deployment it reached (which is in the key's own project), and the settlement of its TPM
reservation (flushed to Redis by a control loop). A stream the client cut before the usage chunk
is charged for the chunks relayed to it, one token each; an error event inside a stream is an
error (its status, the metrics, passive health)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import orjson

from gateway import metrics
from gateway.logs import RequestLogWriter
from gateway.ratelimit import RateLimiter

if TYPE_CHECKING:
    from gateway.proxy import ProxyRequest

USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"(?<=\n\n)|(?<=\r\n\r\n)")
_ERROR = re.compile(rb'"error"\s*:')
# One per content chunk relayed ("data: {...}"; not "data: [DONE]").
DATA_EVENT = b"data: {"


def in_band_error(events: bytes) -> int | None:
    """The status of an error event (`data: {"error": {...}}`, how vLLM reports a failure after
    the 200), or None when these events carry none."""
    if _ERROR.search(events) is None:
        return None
    for event in _EVENT_END.split(events):
        payload = event.strip()
        if not payload.startswith(b"data:"):
            continue
        try:
            chunk = orjson.loads(payload[5:].strip())
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            code = error.get("code") if isinstance(error, dict) else None
            return code if isinstance(code, int) and 400 <= code <= 599 else 500
    return None


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
    def __init__(self, logs: RequestLogWriter, limiter: RateLimiter) -> None:
        self.logs = logs
        self.limiter = limiter
        # (key id, second of the reservation) -> [tokens used - reserved, tokens used], not yet
        # settled in Redis.
        self._pending_tokens: dict[tuple[str, int], list[int]] = {}

    def finish(self, request: ProxyRequest) -> None:
        """Book a request that ended, however it ended (answered, refused, client gone)."""
        ended = time.perf_counter()
        latency = ended - request.started
        status = request.status or 500
        model_metrics = metrics.for_model(request.model)
        model_metrics.latency.observe(latency)
        if request.overhead_s is not None:
            model_metrics.overhead.observe(request.overhead_s)
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
        if request.output_tokens == 0 and request.relayed_events:
            request.output_tokens = request.relayed_events  # cut before the usage chunk
        model_metrics.request(status, request.input_tokens, request.output_tokens)
        tokens = request.input_tokens + request.output_tokens
        if key.tpm_limit is not None and (tokens or request.reserved):
            bucket = (key.id, request.reserved_second)
            pending = self._pending_tokens.get(bucket)
            if pending is None:
                self._pending_tokens[bucket] = [tokens - request.reserved, tokens]
            else:
                pending[0] += tokens - request.reserved
                pending[1] += tokens
        backend = request.backend
        self.logs.add(
            (
                time.time(),
                key.id,
                key.project_id,
                request.deployment_id,
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
        """Settle the TPM reservations of finished requests to the tokens they used."""
        if not self._pending_tokens:
            return
        pending, self._pending_tokens = self._pending_tokens, {}
        await self.limiter.settle_many(
            [(key_id, second, delta, used) for (key_id, second), (delta, used) in pending.items()]
        )
