"""The gateway's SQL (gateway/sql.py) matches the schema: every statement is prepared by
PostgreSQL against tables built from the SQLModel metadata and against the migrated database, so
renaming a table or column in core/models.py fails here, not in the gateway at run time."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlmodel import SQLModel

import core.models  # noqa: F401  (every table registered in SQLModel.metadata)
from core.db import make_engine
from gateway import sql

GATEWAY = Path(sql.__file__).parent
SCHEMA = "from_models"


def statements() -> dict[str, str]:
    """Every statement of gateway/sql.py, found by type so a new one is checked without a list."""
    found: dict[str, str] = {}
    for name, value in vars(sql).items():
        if not name.isupper():
            continue
        if isinstance(value, str):
            found[name] = value
        elif isinstance(value, sql.CopyTarget):
            found[name] = value.as_select()
    return found


async def problems(dsn: str, schema: str) -> dict[str, str]:
    """Statement name -> PostgreSQL's error, for each statement that does not fit `schema`."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        errors: dict[str, str] = {}
        for name, statement in statements().items():
            try:
                await conn.prepare(statement)
            except asyncpg.PostgresError as exc:
                errors[name] = str(exc)
        return errors
    finally:
        await conn.close()


async def tables_from_models(db_url: str) -> None:
    engine = make_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
            await conn.execute(text(f"SET search_path TO {SCHEMA}"))
            await conn.run_sync(SQLModel.metadata.create_all)
    finally:
        await engine.dispose()


def _dsn(db_url: str) -> str:
    return db_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_every_statement_fits_the_models_and_the_migrations(db_url: str) -> None:
    assert set(statements()) >= {"LIVE_DEPLOYMENTS", "API_KEY_BY_HASH", "REQUEST_LOGS"}
    await tables_from_models(db_url)
    assert await problems(_dsn(db_url), SCHEMA) == {}
    assert await problems(_dsn(db_url), "public") == {}  # what Alembic built


async def test_a_renamed_column_is_caught(db_url: str) -> None:
    await tables_from_models(db_url)
    conn = await asyncpg.connect(_dsn(db_url))
    try:
        await conn.execute(f"ALTER TABLE {SCHEMA}.deployments RENAME COLUMN routing TO strategy")
        await conn.execute(f"ALTER TABLE {SCHEMA}.request_logs RENAME COLUMN ttft_ms TO ttft")
    finally:
        await conn.close()
    errors = await problems(_dsn(db_url), SCHEMA)
    assert set(errors) == {"LIVE_DEPLOYMENTS", "REQUEST_LOGS"}
    assert '"routing" does not exist' in errors["LIVE_DEPLOYMENTS"]
    assert '"ttft_ms" does not exist' in errors["REQUEST_LOGS"]


def test_no_sql_outside_the_sql_module() -> None:
    statement = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")
    offenders = [
        str(path.relative_to(GATEWAY))
        for path in GATEWAY.rglob("*.py")
        if path.name != "sql.py" and statement.search(path.read_text())
    ]
    assert offenders == []
