"""Request logs written to PostgreSQL in batches, off the hot path.

The hot path appends a tuple to a bounded buffer. A background task copies batches into
`request_logs`; while the database is down the rows wait (bounded: the oldest are dropped and
counted), and a graceful shutdown flushes what is left.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from gateway import sql
from gateway.metrics import LOGS_DROPPED

log = logging.getLogger("inventiv.gateway.logs")

# (epoch s, key id, project id, deployment id, instance id, model, tokens in, tokens out,
#  ttft ms, latency ms, status, streamed)
LogRow = tuple[
    float,
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    int,
    int,
    float | None,
    float,
    int,
    bool,
]


@functools.lru_cache(maxsize=4096)
def _uuid(value: str | None) -> uuid.UUID | None:
    """Parsed once per distinct id (keys, instances and deployments repeat in every batch)."""
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _record(row: LogRow) -> tuple[object, ...]:
    at, key, project, deployment, instance, *rest = row
    return (
        datetime.fromtimestamp(at, UTC),
        _uuid(key),
        _uuid(project),
        _uuid(deployment),
        _uuid(instance),
        *rest,
    )


class RequestLogWriter:
    def __init__(self, pool: asyncpg.Pool, batch_size: int, buffer_max: int) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.buffer: collections.deque[LogRow] = collections.deque()
        self.buffer_max = buffer_max
        self.dropped = 0
        self.written = 0

    def add(self, row: LogRow) -> None:
        if len(self.buffer) >= self.buffer_max:
            self.buffer.popleft()
            self.dropped += 1
            LOGS_DROPPED.inc()
        self.buffer.append(row)

    async def flush(self) -> None:
        """Write everything buffered; on a database error the rows stay for the next try."""
        while self.buffer:
            count = min(self.batch_size, len(self.buffer))
            batch = [self.buffer[i] for i in range(count)]
            await self.pool.copy_records_to_table(
                sql.REQUEST_LOGS.table,
                records=[_record(r) for r in batch],
                columns=sql.REQUEST_LOGS.columns,
            )
            for _ in range(count):
                self.buffer.popleft()
            self.written += count

    async def run(self, period_s: float, stopping: Callable[[], bool]) -> None:
        """The writer's control loop (until `stopping()`; the shutdown flushes the rest)."""
        failures = 0
        while not stopping():
            await asyncio.sleep(min(period_s * 2**failures, 30.0))
            try:
                await self.flush()
                failures = 0
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                failures = min(failures + 1, 5)
                log.warning(
                    "request log write failed (%s); %d rows buffered", exc, len(self.buffer)
                )
