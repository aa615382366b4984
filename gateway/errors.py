"""OpenAI-format error bodies ({"error": {"message", "type", "param", "code"}}) and the
rate-limited warning of an outage seen on the request path."""

from __future__ import annotations

import logging
import time

import orjson

log = logging.getLogger("inventiv.gateway")


class GatewayError(Exception):
    """An error answered to the client with its status code, in OpenAI's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def invalid_key() -> GatewayError:
    return GatewayError(
        401,
        "Incorrect or missing API key. Send it as 'Authorization: Bearer sk-inv-...'.",
        code="invalid_api_key",
    )


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_request")


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or no deployment serves it.",
        param="model",
        code="model_not_found",
    )


def unavailable(message: str, retry_after_s: int) -> GatewayError:
    return GatewayError(
        503,
        message,
        type_="service_unavailable",
        code="no_capacity",
        headers=[(b"retry-after", str(retry_after_s).encode())],
    )


_last_warning: dict[str, float] = {}


def warn_at_most_every(period_s: float, topic: str, message: str, *args: object) -> None:
    """A per-request failure (an outage) is logged once per period, not once per request."""
    now = time.monotonic()
    if now - _last_warning.get(topic, -period_s) >= period_s:
        _last_warning[topic] = now
        log.warning(message, *args)
