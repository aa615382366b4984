"""The error body every API error has, documented on each router for generated clients."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorMessage(BaseModel):
    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "invalid request (the message says what to change)",
        401: "not logged in, session expired or logged out",
        403: "admin role required",
        404: "not found, or not in one of your projects",
        409: "conflicts with the current state (the message says which)",
        429: "too many attempts: retry after the Retry-After seconds",
    }
    return {code: {"model": ErrorMessage, "description": described[code]} for code in codes}


ERRORS = error_responses(400, 401, 404, 409)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 409)
