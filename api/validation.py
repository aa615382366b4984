"""Constrained input types shared by the routers: bad input is refused with a precise 422
before it reaches PostgreSQL (which, for one, cannot store NUL characters)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

PG_INT_MAX = 2**31 - 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _json_without_nul(value: Any) -> Any:
    """JSONB refuses \\u0000 anywhere, keys included."""
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _json_without_nul(item)
    elif isinstance(value, list):
        for item in value:
            _json_without_nul(item)
    return value


def _email(value: str) -> str:
    local, _, domain = value.partition("@")
    if not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise ValueError("must be an e-mail address like name@example.com")
    return value.lower()


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=120),
    AfterValidator(_no_nul),
]
Text = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_no_nul)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=255),
    AfterValidator(_email),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=1024),
    AfterValidator(_no_nul),
    Field(description="at least 8 characters"),
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_without_nul)]
PositiveLimit = Annotated[int, Field(ge=1, le=PG_INT_MAX)]


class PartialUpdate(BaseModel):
    """A PATCH body: fields left out stay unchanged; only those in `nullable` may be set to null."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        for field in sorted(self.model_fields_set - self.nullable):
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self
