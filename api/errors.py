"""The error body every API error has, documented on each router for generated clients, and the
503 the API answers when a dependency (database, Redis, Temporal) is down or does not answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Dependency = Literal["database", "redis", "temporal"]


class ErrorMessage(BaseModel):
    detail: str


class DependencyUnavailable(ErrorMessage):
    dependency: Dependency


class DependencyUnavailableError(Exception):
    """A dependency did not answer in time or refused the call: the API answers 503."""

    def __init__(self, dependency: Dependency, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency} unavailable: {reason}")


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


# Any route may answer it (the app documents it on all of them).
UNAVAILABLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": DependencyUnavailable,
        "description": "a dependency (the database, redis or temporal: see `dependency`) is "
        "down or did not answer in time: retry after the Retry-After seconds",
    }
}
ERRORS = error_responses(400, 401, 404, 409)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 409)
