"""The simulator's OpenAI-compatible HTTP server, shaped like vLLM's responses and errors."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.sim.config import SimConfig
from agent.sim.engine import Engine, EngineMetrics, SimRequest, block_hashes
from agent.sim.tokenizer import chat_tokens, prompt_tokens

log = logging.getLogger("agent.sim")

# vLLM's /version answers its release; the simulator names the release its behaviour follows.
SIM_VERSION = "0.8.5+inventiv-sim"

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    n: int = 1


class ChatRequest(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]


class SimulatedStreamAbort(Exception):
    """Raised mid-stream: the server drops the connection, as when an engine worker dies."""


class SimError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    body = {
        "object": "error",
        "message": message,
        "type": _ERROR_TYPES.get(status, "Error"),
        "param": None,
        "code": status,
    }
    return JSONResponse(body, status_code=status)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def create_app(config: SimConfig) -> FastAPI:
    metrics = EngineMetrics(config)
    engine = Engine(config, metrics)
    rng = random.Random(config.seed)
    counter = {"received": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="vLLM simulator", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(SimError)
    async def _sim_error(request: Request, exc: SimError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": SIM_VERSION}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": config.model,
                    "parent": None,
                    "max_model_len": config.max_model_len,
                }
                for name in config.served_names
            ],
        }

    async def parse(request: Request, kind: type[_Common]) -> Any:
        try:
            body = orjson.loads(await request.body())
            parsed = kind.model_validate(body)
        except orjson.JSONDecodeError as exc:
            raise SimError(400, f"request body is not valid JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SimError(400, f"{where}: {first['msg']}") from None
        if parsed.model not in config.served_names:
            raise SimError(404, f"The model `{parsed.model}` does not exist.")
        if parsed.n != 1:
            raise SimError(400, "n must be 1: the simulator samples one choice per request")
        return parsed

    async def admit(
        prompt: Sequence[str | int], max_tokens: int | None, seed: int | None, stream: bool
    ) -> SimRequest:
        """Apply vLLM's length checks and the configured faults; queue the request."""
        prompt_tokens = len(prompt)
        if prompt_tokens == 0:
            raise SimError(400, "The decoder prompt cannot be empty")
        counter["received"] += 1
        if config.fault_crash_after and counter["received"] > config.fault_crash_after:
            log.error("simulated crash after %d requests", config.fault_crash_after)
            os._exit(70)
        draw = rng.random()
        for status, rate in config.fault_error_rates.items():
            if draw < rate:
                raise SimError(status, f"simulated fault: HTTP {status}")
            draw -= rate
        # without max_tokens the model "ends its answer" (EOS) after the default length
        finish_reason = "stop" if max_tokens is None else "length"
        if max_tokens is None:
            max_tokens = max(
                1, min(config.default_max_tokens, config.max_model_len - prompt_tokens)
            )
        if max_tokens < 1:
            raise SimError(400, "max_tokens must be at least 1")
        if prompt_tokens + max_tokens > config.max_model_len:
            raise SimError(
                400,
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {prompt_tokens + max_tokens} tokens "
                f"({prompt_tokens} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
            )
        if not engine.fits_at_all(prompt_tokens, max_tokens):
            raise SimError(400, "the request needs more KV cache than the engine has")
        if config.fault_hang_rate and rng.random() < config.fault_hang_rate:
            await asyncio.sleep(config.fault_hang_s)
        request_rng = random.Random(seed if seed is not None else rng.getrandbits(64))
        sim_request = SimRequest(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            rng=request_rng,
            finish_reason=finish_reason,
            prompt_blocks=block_hashes(prompt, config.block_size)
            if config.enable_prefix_caching
            else [],
        )
        if stream and config.fault_stream_abort_rate:
            if rng.random() < config.fault_stream_abort_rate:
                sim_request.abort_after = max_tokens // 2
        engine.submit(sim_request)
        return sim_request

    async def tokens_of(sim_request: SimRequest) -> AsyncIterator[str]:
        finished = False
        emitted = 0
        try:
            while (token := await sim_request.output.get()) is not None:
                if sim_request.abort_after is not None and emitted >= sim_request.abort_after:
                    log.warning("simulated fault: dropping a stream after %d tokens", emitted)
                    raise SimulatedStreamAbort(f"stream dropped after {emitted} tokens")
                yield token
                emitted += 1
            finished = True
        finally:
            if not finished:  # client gone or stream dropped: free the slot and KV blocks
                engine.cancel(sim_request)

    def usage(sim_request: SimRequest) -> dict[str, Any]:
        return {
            "prompt_tokens": sim_request.prompt_tokens,
            "completion_tokens": sim_request.generated,
            "total_tokens": sim_request.prompt_tokens + sim_request.generated,
            "prompt_tokens_details": {"cached_tokens": sim_request.cached_tokens}
            if config.enable_prompt_tokens_details
            else None,
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body: ChatRequest = await parse(request, ChatRequest)
        for index, message in enumerate(body.messages):
            if not isinstance(message.get("role"), str):
                raise SimError(400, f"messages.{index}.role: a message needs a role")
            if not isinstance(message.get("content"), str | list | None):
                raise SimError(400, f"messages.{index}.content: expected text or a list of parts")
        prompt = chat_tokens(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        sim_request = await admit(prompt, max_tokens, body.seed, body.stream)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            text = "".join([token async for token in tokens_of(sim_request)])
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": text,
                                "tool_calls": [],
                                "reasoning_content": None,
                            },
                            "logprobs": None,
                            "finish_reason": sim_request.finish_reason,
                            "stop_reason": None,
                        }
                    ],
                    "usage": usage(sim_request),
                    "prompt_logprobs": None,
                }
            )
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                payload["usage"] = None
            return payload

        async def stream() -> AsyncIterator[bytes]:
            first = True
            async for token in tokens_of(sim_request):
                if first:  # vLLM sends the role once the first token exists, not before
                    yield _sse(chunk({"role": "assistant", "content": ""}, None))
                    first = False
                yield _sse(chunk({"content": token}, None))
            yield _sse(chunk({}, sim_request.finish_reason))
            if include_usage:
                yield _sse(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body.model,
                        "choices": [],
                        "usage": usage(sim_request),
                    }
                )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise SimError(400, "the simulator takes one prompt per request")
            prompt = prompt[0]  # type: ignore[assignment]
        tokens = prompt_tokens(prompt)  # type: ignore[arg-type]
        sim_request = await admit(tokens, body.max_tokens, body.seed, body.stream)
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            text = "".join([token async for token in tokens_of(sim_request)])
            return JSONResponse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "text": text,
                            "logprobs": None,
                            "finish_reason": sim_request.finish_reason,
                            "stop_reason": None,
                            "prompt_logprobs": None,
                        }
                    ],
                    "usage": usage(sim_request),
                }
            )
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                ],
            }
            if include_usage:
                payload["usage"] = None
            return payload

        async def stream() -> AsyncIterator[bytes]:
            async for token in tokens_of(sim_request):
                yield _sse(chunk(token, None))
            yield _sse(chunk("", sim_request.finish_reason))
            if include_usage:
                yield _sse(
                    {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": body.model,
                        "choices": [],
                        "usage": usage(sim_request),
                    }
                )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app
