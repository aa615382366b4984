"""Request logs survive a database outage: buffered, bounded (drops counted), written afterwards."""

from __future__ import annotations

import time
import uuid

import asyncpg

from gateway.logs import RequestLogWriter
from gateway.metrics import LOGS_DROPPED


def row(model: str) -> tuple:  # type: ignore[type-arg]
    return (
        time.time(),
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        None,
        None,
        model,
        7,
        3,
        12.5,
        40.0,
        200,
        True,
    )


async def test_outage_buffers_drops_oldest_and_recovers(db_url: str) -> None:
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    admin = await asyncpg.connect(dsn)
    try:
        writer = RequestLogWriter(pool, batch_size=2, buffer_max=3)
        dropped_before = LOGS_DROPPED._value.get()
        # The table is unavailable (as during a failed migration or a lost database).
        await admin.execute("ALTER TABLE request_logs RENAME TO request_logs_away")
        for name in ("m1", "m2"):
            writer.add(row(name))
        try:
            await writer.flush()
            raise AssertionError("the flush should have failed")
        except asyncpg.PostgresError:
            pass
        for name in ("m3", "m4"):
            writer.add(row(name))
        assert len(writer.buffer) == 3
        assert writer.dropped == 1
        assert LOGS_DROPPED._value.get() - dropped_before == 1

        await admin.execute("ALTER TABLE request_logs_away RENAME TO request_logs")
        await writer.flush()
        models = [
            r["model"] for r in await admin.fetch("SELECT model FROM request_logs ORDER BY id")
        ]
        # The oldest row was dropped; the others arrive in order, once each.
        assert models == ["m2", "m3", "m4"]
        assert not writer.buffer
    finally:
        await admin.close()
        await pool.close()
