"""Async SQLAlchemy engine on asyncpg, and session helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

# What asyncpg raises when the server is down, hung, starting or full; not a fault of the query.
_UNREACHABLE = (
    OSError,  # refused, reset, no socket file; TimeoutError (connect or command timeout) too
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class DatabaseUnavailableError(Exception):
    """PostgreSQL did not answer within the engine's timeout, or could not be reached."""


class BoundedAsyncpgDialect(PGDialect_asyncpg):
    """asyncpg, where a pooled connection whose ping gets no answer in time counts as broken: the
    pool replaces it (that connect is bounded too) instead of raising the bare timeout."""

    supports_statement_cache = True

    def do_ping(self, dbapi_connection: Any) -> bool:
        try:
            return bool(super().do_ping(dbapi_connection))
        except _UNREACHABLE:
            return False


registry.register("postgresql.bounded_asyncpg", __name__, "BoundedAsyncpgDialect")


def async_url(url: str) -> str:
    """Turn any postgres URL (libpq form, or pgserver's unix-socket form) into an asyncpg one."""
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg"
    query = dict(parse_qsl(parts.query))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def make_engine(url: str, *, pool_size: int = 10, timeout_s: float | None = None) -> AsyncEngine:
    """An engine on `url`. With `timeout_s`, every wait on the database is bounded by it (a
    connection, a pooled connection, each statement, server-side too) and a database that does
    not answer raises `DatabaseUnavailableError` instead of hanging."""
    if timeout_s is None:
        return create_async_engine(
            async_url(url), pool_size=pool_size, max_overflow=20, pool_pre_ping=True
        )
    dsn = async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)

    async def connect() -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                dsn,
                timeout=timeout_s,
                command_timeout=timeout_s,
                server_settings={"statement_timeout": str(int(timeout_s * 1000))},
            )
        except _UNREACHABLE as exc:
            raise DatabaseUnavailableError(f"cannot connect: {exc!r}") from exc

    engine = create_async_engine(
        "postgresql+bounded_asyncpg://",
        async_creator=connect,
        pool_size=pool_size,
        max_overflow=20,
        pool_pre_ping=True,
        pool_timeout=timeout_s,
    )
    event.listen(engine.sync_engine, "handle_error", _unreachable_as_unavailable)
    return engine


def _unreachable_as_unavailable(context: ExceptionContext) -> BaseException | None:
    """A statement that timed out or lost its connection: the database is unavailable."""
    error = context.original_exception
    if isinstance(error, _UNREACHABLE):
        return DatabaseUnavailableError(f"no answer: {error!r}")
    return None


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(
    maker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session
