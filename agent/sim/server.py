"""The simulator's OpenAI-compatible HTTP server, shaped like vLLM's responses and errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
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

# vLLM's error `type` per status; request-validation errors are "Bad Request" instead.
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
    temperature: float | None = None


class ChatRequest(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]


class SimulatedStreamFailure(Exception):
    """Raised mid-stream, as when generation fails in an engine worker; vLLM then sends an
    in-band error event and ends the stream."""


class SimError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.error_type = error_type or _ERROR_TYPES.get(status, "Error")

    def body(self) -> dict[str, Any]:
        """vLLM's error body: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_parameter(param: str, message: str, value: Any) -> SimError:
    """A refused parameter, worded as vLLM words it."""
    return SimError(400, f"{message} (parameter={param}, value={value})", param)


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    error = SimError(status, message, param)
    return JSONResponse(error.body(), status_code=status)


def _validation_error(exc: ValidationError) -> SimError:
    """Pydantic's complaint, in the form vLLM's FastAPI handler gives it."""
    errors = exc.errors()
    loc = "body." + ".".join(str(part) for part in errors[0]["loc"])
    count = f"{len(errors)} validation error" + ("s" if len(errors) > 1 else "")
    first = {"type": errors[0]["type"], "loc": loc, "msg": errors[0]["msg"]}
    return SimError(400, f"{count}:\n  {first}", loc, "Bad Request")


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def _require_api_key(app: FastAPI, keys: list[str]) -> None:
    """vLLM's AuthenticationMiddleware: every path under /v1 (not OPTIONS) needs
    `Authorization: Bearer <one of the keys>`, else 401 `{"error": "Unauthorized"}`; /health,
    /version and /metrics stay open."""
    digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def verified(header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(digest, known) for known in digests)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if (
            request.method != "OPTIONS"
            and path.startswith("/v1")
            and not verified(request.headers.get("authorization"))
        ):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        response: Response = await call_next(request)
        return response


def create_app(config: SimConfig) -> FastAPI:
    metrics = EngineMetrics(config)
    engine = Engine(config, metrics)
    rng = random.Random(config.seed)
    counter = {"received": 0}
    fingerprint = f"vllm-{SIM_VERSION}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="vLLM simulator", lifespan=lifespan)
    app.state.engine = engine
    if config.api_keys:
        _require_api_key(app, config.api_keys)

    @app.exception_handler(SimError)
    async def _sim_error(request: Request, exc: SimError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

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
                    "permission": [_PERMISSION | {"created": created}],
                }
                for name in config.served_names
            ],
        }

    async def parse(request: Request, kind: type[_Common]) -> Any:
        try:
            body = orjson.loads(await request.body())
            parsed = kind.model_validate(body)
        except orjson.JSONDecodeError as exc:
            raise SimError(400, f"JSON decode error: {exc}", "body", "Bad Request") from None
        except ValidationError as exc:
            raise _validation_error(exc) from None
        if parsed.model not in config.served_names:
            aliases = ", ".join(config.served_names)
            message = f"The model `{parsed.model}` does not exist. Valid aliases: {aliases}."
            raise SimError(404, message, "model")
        if parsed.stream_options is not None and not parsed.stream:
            raise SimError(
                400,
                "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
                "stream_options",
            )
        if parsed.n < 1:
            raise SimError(400, f"n must be at least 1, got {parsed.n}.")
        if parsed.temperature is not None and parsed.temperature < 0:
            raise bad_parameter(
                "temperature",
                f"temperature must be non-negative, got {parsed.temperature}.",
                parsed.temperature,
            )
        return parsed

    async def admit(
        prompt: Sequence[str | int], max_tokens: int | None, body: _Common
    ) -> list[SimRequest]:
        """Apply vLLM's length checks and the configured faults; queue the request's `n`
        sequences."""
        prompt_tokens = len(prompt)
        limit = config.max_model_len
        if prompt_tokens > limit:
            # vLLM stops counting one token past the limit
            raise SimError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains at least {limit + 1} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={limit + 1})",
                "input_tokens",
            )
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
            max_tokens = config.default_max_tokens
        # vLLM 0.32 shortens an answer that would not fit rather than refusing the request
        max_tokens = min(max_tokens, limit - prompt_tokens)
        if max_tokens < 1:
            raise bad_parameter(
                "max_tokens", f"max_tokens must be at least 1, got {max_tokens}.", max_tokens
            )
        if not engine.fits_at_all(prompt_tokens, max_tokens):
            raise SimError(400, "the request needs more KV cache than the engine has")
        if config.fault_hang_rate and rng.random() < config.fault_hang_rate:
            await asyncio.sleep(config.fault_hang_s)
        seed = body.seed if body.seed is not None else rng.getrandbits(64)
        blocks = block_hashes(prompt, config.block_size) if config.enable_prefix_caching else []
        fail_stream = bool(
            body.stream
            and config.fault_stream_abort_rate
            and rng.random() < config.fault_stream_abort_rate
        )
        sequences = []
        for index in range(body.n):
            sim_request = SimRequest(
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens,
                rng=random.Random(seed + index),
                finish_reason=finish_reason,
                prompt_blocks=blocks,
            )
            if fail_stream:
                sim_request.abort_after = max_tokens // 2
            engine.submit(sim_request)
            sequences.append(sim_request)
        return sequences

    async def tokens_of(sim_request: SimRequest) -> AsyncIterator[str]:
        finished = False
        emitted = 0
        try:
            while (token := await sim_request.output.get()) is not None:
                if sim_request.abort_after is not None and emitted >= sim_request.abort_after:
                    log.warning("simulated fault: generation failed after %d tokens", emitted)
                    raise SimulatedStreamFailure(f"generation failed after {emitted} tokens")
                yield token
                emitted += 1
            finished = True
        finally:
            if not finished:  # client gone or generation failed: free the slot and KV blocks
                engine.cancel(sim_request)

    async def text_of(sim_request: SimRequest) -> str:
        return "".join([token async for token in tokens_of(sim_request)])

    async def merged(sequences: list[SimRequest]) -> AsyncIterator[tuple[int, str, bool]]:
        """(choice index, text, last) as the sequences produce tokens, each sent as it comes, as
        vLLM sends them: a sequence ends at its max_tokens-th token, so that one is known to be
        the last (it carries the finish reason) without waiting for the end of the stream."""
        queue: asyncio.Queue[tuple[int, str, bool] | BaseException] = asyncio.Queue()

        async def pump(index: int, sim_request: SimRequest) -> None:
            try:
                count = 0
                async for token in tokens_of(sim_request):
                    count += 1
                    await queue.put((index, token, count >= sim_request.max_tokens))
                if count < sim_request.max_tokens:  # ended early: the end carries no text
                    await queue.put((index, "", True))
            except Exception as exc:
                await queue.put(exc)

        pumps = [asyncio.create_task(pump(i, r)) for i, r in enumerate(sequences)]
        try:
            remaining = len(sequences)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                remaining -= item[2]
                yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    def usage(sequences: list[SimRequest]) -> dict[str, Any]:
        prompt = sequences[0].prompt_tokens
        generated = sum(sim_request.generated for sim_request in sequences)
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + generated,
            "completion_tokens": generated,
            "prompt_tokens_details": {"cached_tokens": sequences[0].cached_tokens}
            if config.enable_prompt_tokens_details
            else None,
            "completion_tokens_details": None,
        }

    def stream_usage(sequences: list[SimRequest]) -> dict[str, Any]:
        """The usage chunk's usage: vLLM leaves out the empty details there."""
        return {key: value for key, value in usage(sequences).items() if value is not None}

    async def sse_stream(
        sequences: list[SimRequest],
        chunk: Callable[[int, str, str | None], dict[str, Any]],
        head: Callable[[], dict[str, Any]],
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        try:
            async for index, text, last in merged(sequences):
                payload = chunk(index, text, sequences[index].finish_reason if last else None)
                if last and not include_usage:  # else the usage chunk carries it
                    payload["system_fingerprint"] = fingerprint
                yield _sse(payload)
            if include_usage:
                yield _sse(
                    head()
                    | {"choices": [], "usage": stream_usage(sequences)}
                    | {"system_fingerprint": fingerprint}
                )
        except SimulatedStreamFailure:
            yield _sse(SimError(500, "Internal server error").body())
        yield _sse("[DONE]")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body: ChatRequest = await parse(request, ChatRequest)
        if not body.messages:
            raise SimError(
                400,
                "Cannot apply chat template to an empty conversation. "
                "Provide at least one message.",
            )
        for index, message in enumerate(body.messages):
            if not isinstance(message.get("role"), str):
                raise SimError(
                    400,
                    f"messages.{index}.role: a message needs a role",
                    f"body.messages.{index}.role",
                    "Bad Request",
                )
            if not isinstance(message.get("content"), str | list | None):
                raise SimError(
                    400,
                    f"messages.{index}.content: expected text or a list of parts",
                    f"body.messages.{index}.content",
                    "Bad Request",
                )
        prompt = chat_tokens(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        sequences = await admit(prompt, max_tokens, body)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def head() -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk" if body.stream else "chat.completion",
                "created": created,
                "model": body.model,
            }

        if not body.stream:
            texts = await asyncio.gather(*(text_of(r) for r in sequences))
            return JSONResponse(
                head()
                | {
                    "choices": [
                        {
                            "index": index,
                            "message": _MESSAGE | {"content": text},
                            "logprobs": None,
                            "finish_reason": sim_request.finish_reason,
                            "stop_reason": None,
                            "token_ids": None,
                            "routed_experts": None,
                        }
                        for index, (text, sim_request) in enumerate(
                            zip(texts, sequences, strict=True)
                        )
                    ],
                    "service_tier": None,
                    "system_fingerprint": fingerprint,
                    "usage": usage(sequences),
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": None,
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )
        include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))

        def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {
                "index": index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if finish is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = None
            return head() | {"choices": [choice]}

        def role_chunk(index: int) -> dict[str, Any]:
            choice = {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            return head() | {"choices": [choice], "prompt_token_ids": None, "prompt_text": None}

        async def stream() -> AsyncIterator[bytes]:
            # vLLM sends each choice's role once the first token exists, not before
            roles_sent = False
            async for event in sse_stream(sequences, chunk, head, include_usage):
                if not roles_sent and event.startswith(b'data: {"id"'):
                    for index in range(len(sequences)):
                        yield _sse(role_chunk(index))
                    roles_sent = True
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise SimError(400, "the simulator takes one prompt per request", "prompt")
            prompt = prompt[0]  # type: ignore[assignment]
        tokens = prompt_tokens(prompt)  # type: ignore[arg-type]
        if not tokens:
            raise SimError(
                400,
                "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                "prompt",
            )
        sequences = await admit(tokens, body.max_tokens, body)
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def head() -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        if not body.stream:
            texts = await asyncio.gather(*(text_of(r) for r in sequences))
            return JSONResponse(
                head()
                | {
                    "choices": [
                        {
                            "index": index,
                            "text": text,
                            "logprobs": None,
                            "finish_reason": sim_request.finish_reason,
                            "stop_reason": None,
                            "token_ids": None,
                            "prompt_logprobs": None,
                            "prompt_token_ids": None,
                            "routed_experts": None,
                        }
                        for index, (text, sim_request) in enumerate(
                            zip(texts, sequences, strict=True)
                        )
                    ],
                    "service_tier": None,
                    "system_fingerprint": fingerprint,
                    "usage": usage(sequences),
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )
        include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))

        def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
            choice = {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
            return head() | {"choices": [choice]}

        return StreamingResponse(
            sse_stream(sequences, chunk, head, include_usage), media_type="text/event-stream"
        )

    return app


# The fields vLLM 0.32 puts beside the content of a chat answer's message, and in a model's
# permission entry.
_MESSAGE: dict[str, Any] = {
    "role": "assistant",
    "content": "",
    "refusal": None,
    "annotations": None,
    "audio": None,
    "function_call": None,
    "reasoning": None,
}
_PERMISSION: dict[str, Any] = {
    "id": "modelperm-inventiv-sim",
    "object": "model_permission",
    "allow_create_engine": False,
    "allow_sampling": True,
    "allow_logprobs": True,
    "allow_search_indices": False,
    "allow_view": True,
    "allow_fine_tuning": False,
    "organization": "*",
    "group": None,
    "is_blocking": False,
}
