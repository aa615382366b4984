"""A small OpenAI-compatible engine for gateway tests and benchmarks: a real HTTP server whose
behaviour (delays, failures, held responses) the test controls.

`python -m tests.gateway.engine --port N` serves it alone (the benchmark's trivial upstream:
no delays, a fixed short answer).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@dataclass
class EngineBehaviour:
    tokens: int = 3  # output tokens (one SSE chunk each)
    token_delay_s: float = 0.0  # pause between streamed tokens
    first_token_delay_s: float = 0.0  # pause before the first streamed token
    fail_status: int | None = None  # answer every request with this status
    hold: asyncio.Event | None = None  # do not answer until this event is set
    break_after: int | None = None  # drop the connection after streaming this many tokens
    break_mid_event: bool = False  # ... having sent the first half of the next event
    # After streaming this many tokens, report a failure in-band as vLLM does (HTTP 200 already
    # sent: `data: {"error": {...}}`, then `data: [DONE]`).
    error_after: int | None = None


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    finished: bool = False
    cancelled: bool = False


@dataclass
class TestEngine:
    """An ASGI OpenAI-compatible engine that records what it received."""

    __test__ = False  # a helper, not a test class

    name: str = "engine"
    behaviour: EngineBehaviour = field(default_factory=EngineBehaviour)
    requests: list[RecordedRequest] = field(default_factory=list)
    active: int = 0

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = RecordedRequest(
            path=scope["path"],
            body=orjson.loads(body) if body else {},
            headers={k.decode(): v.decode() for k, v in scope["headers"]},
        )
        self.requests.append(request)
        self.active += 1
        # Like vLLM: stop generating as soon as the client (the gateway) goes away.
        answer = asyncio.ensure_future(self._answer(request, send, receive))
        disconnect = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({answer, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                request.cancelled = True
                return
            answer.result()
            request.finished = True
        except OSError:
            request.cancelled = True
            raise
        finally:
            disconnect.cancel()
            self.active -= 1

    async def _answer(
        self,
        request: RecordedRequest,
        send: Callable[[Message], Awaitable[None]],
        receive: Callable[[], Awaitable[Message]],
    ) -> None:
        behaviour = self.behaviour
        if behaviour.hold is not None:
            await behaviour.hold.wait()
        if behaviour.fail_status is not None:
            await _json(send, behaviour.fail_status, {"error": {"message": "engine failure"}})
            return
        if request.path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [{"id": self.name}]})
            return
        body = request.body
        model = body.get("model", "")
        chat = request.path == "/v1/chat/completions"
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": behaviour.tokens,
            "total_tokens": 7 + behaviour.tokens,
        }
        if request.path == "/v1/embeddings":
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "model": model,
                    "usage": {"prompt_tokens": 7, "total_tokens": 7},
                },
            )
            return
        if not body.get("stream"):
            if behaviour.break_after is not None:
                # Headers and part of the body, then the engine dies.
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"1000"),
                        ],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": b'{"id": "cmpl', "more_body": True}
                )
                raise ConnectionAbortedError("engine crashed mid-answer")
            text = " ".join(f"t{i}" for i in range(behaviour.tokens))
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            await _json(
                send,
                200,
                {
                    "id": "cmpl-test",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                    "served_by": self.name,
                },
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        kind = "chat.completion.chunk" if chat else "text_completion"
        if behaviour.first_token_delay_s:
            await asyncio.sleep(behaviour.first_token_delay_s)
        for i in range(behaviour.tokens):
            if i == behaviour.break_after:
                if behaviour.break_mid_event:
                    torn = b'data: {"id": "cmpl-torn", "object": "'
                    await send({"type": "http.response.body", "body": torn, "more_body": True})
                raise ConnectionAbortedError("engine crashed mid-stream")
            if i == behaviour.error_after:
                error = {
                    "error": {
                        "message": "engine failed mid-stream",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n",
                        "more_body": False,
                    }
                )
                return
            if i and behaviour.token_delay_s:
                await asyncio.sleep(behaviour.token_delay_s)
            delta: dict[str, Any] = (
                {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                if chat
                else {"index": 0, "text": f"t{i} ", "finish_reason": None}
            )
            chunk = {
                "id": "cmpl-test",
                "object": kind,
                "model": model,
                "choices": [delta],
                "usage": None,
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            chunk = {
                "id": "cmpl-test",
                "object": kind,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Callable[[Message], Awaitable[None]], status: int, payload: Any) -> None:
    data = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class RunningServer:
    """A uvicorn server on 127.0.0.1:port inside the current event loop."""

    def __init__(self, app: Any, port: int, keep_alive_s: int = 5) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=keep_alive_s,
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 15)
            except TimeoutError:
                for task in asyncio.all_tasks():
                    task.print_stack()
                raise


def main() -> None:
    parser = argparse.ArgumentParser(description="Trivial OpenAI-compatible engine")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=3)
    args = parser.parse_args()
    config = uvicorn.Config(
        TestEngine(behaviour=EngineBehaviour(tokens=args.tokens)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
