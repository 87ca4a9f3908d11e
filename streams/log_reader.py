"""Reads records back from places the log already holds, for the worker: the chunks of a chunked job
(streams.chunk_reader), a batch's recorded outcomes and single records (streams.ledger).

One consumer outside any consumer group; one read at a time, because assign and seek are per consumer; the
partition is unassigned after each read. A place before the start of its partition (retention deleted it) is
refused with ``RecordGone`` before the partition is assigned: a seek there is reset elsewhere in the partition,
and a consumer left with an assigned partition it never positioned hung in ``stop()`` (aiokafka 0.12; seen
with a deleted chunk, tests/integration/test_log_reading.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from config.settings import Settings


class RecordGone(LookupError):
    """The record asked for is before the start of its partition: retention has deleted it."""


# A place this few offsets past the consumer's position is read forward to, not sought: the chunks of one job
# lie in one partition in order, at most a few other jobs' chunks between them.
_READ_FORWARD = 16


class PositionedRead:
    """One read under the reader's lock: records at known places, read forward within the partition in hand.

    At most ``max_records`` records are taken from the consumer at once (decompressed and held here until asked
    for); the rest of a fetch stays in the consumer's buffer, compressed. A place at or a little past the
    consumer's position is read forward to without a seek (which would drop that buffer and fetch it again)."""

    def __init__(self, consumer: AIOKafkaConsumer, max_records: int) -> None:
        self._consumer = consumer
        self._max_records = max_records
        self._current: TopicPartition | None = None
        self._ahead: deque[ConsumerRecord] = deque()
        self._after: int | None = None  # records of _current from here on are in _ahead or still to be fetched

    @property
    def held(self) -> int:
        """Records taken from the consumer and held ahead of the one last returned."""
        return len(self._ahead)

    def _assign(self, tp: TopicPartition) -> None:
        if tp != self._current:
            self._consumer.assign([tp])
            self._current = tp
            self._ahead.clear()
            self._after = None

    async def end_offset(self, tp: TopicPartition) -> int:
        return int((await self._consumer.end_offsets([tp]))[tp])

    async def record_at(self, tp: TopicPartition, offset: int) -> ConsumerRecord:
        """The record at ``offset``: read forward from where the consumer is, else after a seek."""
        where = f"{tp.topic}[{tp.partition}]@{offset}"
        ahead = self._ahead
        if tp != self._current or self._after is None or not self._after <= offset <= self._after + _READ_FORWARD:
            # Asked before the partition is assigned: assigned and then left without a position, the consumer
            # hung in stop().
            start = (await self._consumer.beginning_offsets([tp]))[tp]
            if offset < start:
                raise RecordGone(f"{where} is no longer in the log (it starts at {start})")
            self._assign(tp)
            ahead.clear()
            self._consumer.seek(tp, offset)
            self._after = offset
        while True:
            while ahead and ahead[0].offset < offset:
                ahead.popleft()
            if ahead:
                break
            fetched = (await self._consumer.getmany(tp, timeout_ms=5000, max_records=self._max_records)).get(tp, [])
            if not fetched:
                raise LookupError(f"{where} is no longer in the log")
            ahead.extend(fetched)
        record = ahead.popleft()
        self._after = record.offset + 1
        if record.offset != offset:
            raise LookupError(f"{where} holds no record (the next one is at {record.offset})")
        return record

    async def records_between(self, tp: TopicPartition, start: int, end: int) -> AsyncIterator[ConsumerRecord]:
        """Every record from ``start`` on, until the position reaches ``end`` (a fetch may return some past it)."""
        self._assign(tp)
        self._ahead.clear()
        self._after = None  # read past what record_at could tell: its next read seeks
        self._consumer.seek(tp, start)
        while await self._consumer.position(tp) < end:
            for record in (await self._consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                yield record

    def release(self) -> None:
        if self._current is not None:
            self._consumer.unsubscribe()
            self._current = None
            self._after = None


class LogReader:
    """The consumer's lifecycle and the one-read-at-a-time lock; subclasses say what they read."""

    def __init__(self, settings: Settings, *, what: str, max_partition_fetch_bytes: int,
                 fetch_max_bytes: int | None = None, max_records: int = 1) -> None:
        self._settings = settings
        self._what = what
        self._fetch = {"max_partition_fetch_bytes": max_partition_fetch_bytes}
        if fetch_max_bytes is not None:
            self._fetch["fetch_max_bytes"] = fetch_max_bytes
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one reader at a time: assign/seek are per consumer

    async def start(self) -> None:
        """Start the reader's consumer; one that fails to start (no broker) is closed and not kept, so that the
        next start tries again (the worker's context retries it until a broker answers)."""
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                **self._fetch,
            )
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):  # the start's own error is the one to raise
                    await asyncio.shield(consumer.stop())  # its client's connections and tasks, not left behind
                raise
            self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _started(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, f"{self._what} not started"
        return self._consumer

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[PositionedRead]:
        """One read: holds the lock, unassigns the partition at the end (also when the caller stops early)."""
        consumer = self._started()
        async with self._lock:
            read = PositionedRead(consumer, self._max_records)
            try:
                yield read
            finally:
                read.release()
