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


class _ChasedPool:
    """A pool whose COPY sees a request add a row while it writes (steady traffic)."""

    def __init__(self, writer: RequestLogWriter | None = None, adds: int = 100) -> None:
        self.writer = writer
        self.adds = adds  # how many of the COPYs see a row added
        self.copies: list[list[str]] = []

    async def copy_records_to_table(self, table: str, *, records, columns) -> None:  # type: ignore[no-untyped-def]
        rows = [record[5] async for record in records]
        assert self.writer is not None
        if len(self.copies) < self.adds:
            self.writer.add(row(f"during-{len(self.copies)}"))
        self.copies.append(rows)


async def test_flush_writes_what_was_buffered_and_leaves_new_rows_for_the_next() -> None:
    pool = _ChasedPool()
    writer = RequestLogWriter(pool, batch_size=2, buffer_max=100)  # type: ignore[arg-type]
    pool.writer = writer
    for name in ("m1", "m2", "m3"):
        writer.add(row(name))
    await writer.flush()
    # Two batches for the three rows there at the call, then it returns: the rows added during
    # the writes wait (a flush that chased them never ended under steady traffic).
    assert pool.copies == [["m1", "m2"], ["m3"]]
    assert [r[5] for r in writer.buffer] == ["during-0", "during-1"]
    assert writer.written == 3
    await writer.flush()
    assert pool.copies[2] == ["during-0", "during-1"]
    assert [r[5] for r in writer.buffer] == ["during-2"]


async def test_the_shutdown_flush_writes_the_rows_added_meanwhile_too() -> None:
    pool = _ChasedPool(adds=2)
    writer = RequestLogWriter(pool, batch_size=2, buffer_max=100)  # type: ignore[arg-type]
    pool.writer = writer
    writer.add(row("m1"))
    await writer.flush(until_empty=True)
    assert pool.copies == [["m1"], ["during-0"], ["during-1"]]
    assert not writer.buffer


async def test_ids_are_written_as_uuids_and_a_malformed_one_as_null(db_url: str) -> None:
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        writer = RequestLogWriter(pool, batch_size=10, buffer_max=10)
        key, project = uuid.uuid4(), uuid.uuid4()
        good = row("ids")
        writer.add((good[0], str(key), str(project).upper(), None, "not-a-uuid", *good[5:]))
        await writer.flush()
        written = await pool.fetchrow(
            "SELECT api_key_id, project_id, instance_id FROM request_logs WHERE model = 'ids'"
        )
        assert written is not None
        assert (written["api_key_id"], written["project_id"]) == (key, project)
        assert written["instance_id"] is None
    finally:
        await pool.close()
