"""Reads a chunked job's learners back from job-requests, chunk by chunk, for the route agent to cut batches.

The route agent keeps only where each chunk lies in the log (streams.chunked_jobs); after the commit it reads
the chunks in chunk order, one fetch (a few MB) at a time, and removes repeated learners while streaming
(schemas.chunking): memory stays flat whatever the job's size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from config.settings import Settings
from eventlog.topics import MAX_MESSAGE_BYTES
from schemas.chunking import without_repeats
from schemas.envelope import decode
from schemas.events import Recipient, RecipientChunkReceived
from streams.ledger import RecordGone

# A fetch returns at least one record however large; this bounds what is read ahead of the chunk in hand (a
# chunk of 10,000 learners is ~1 MB, ~8 MB once decoded: 4 MiB read ahead doubled the reader's share).
_FETCH_BYTES = 1024 * 1024


class ChunkReader:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic("job-requests")
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one reader at a time: assign/seek are per consumer

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_partition_fetch_bytes=_FETCH_BYTES,
                fetch_max_bytes=max(_FETCH_BYTES, MAX_MESSAGE_BYTES // 4),
            )
            await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def chunks(self, job_id: str,
                     places: Sequence[tuple[int, int]]) -> AsyncGenerator[RecipientChunkReceived, None]:
        """The chunks at ``places`` (chunk 0, 1, … of the job), in that order."""
        assert self._consumer is not None, "chunk reader not started"
        consumer = self._consumer
        async with self._lock:
            ahead: deque[ConsumerRecord] = deque()
            current: TopicPartition | None = None
            try:
                for number, (partition, offset) in enumerate(places):
                    tp = TopicPartition(self._topic, partition)
                    if tp != current:
                        consumer.assign([tp])
                        current = tp
                        ahead.clear()
                    while ahead and ahead[0].offset < offset:
                        ahead.popleft()
                    if not ahead or ahead[0].offset > offset:  # not read ahead (a chunk sent again came later)
                        ahead.clear()
                        consumer.seek(tp, offset)
                    while not ahead:
                        fetched = (await consumer.getmany(tp, timeout_ms=5000, max_records=16)).get(tp, [])
                        if not fetched:
                            raise RecordGone(f"{tp.topic}[{partition}]@{offset} is no longer in the log")
                        ahead.extend(r for r in fetched if r.offset >= offset)
                    record = ahead.popleft()
                    if record.offset != offset:
                        raise RecordGone(f"{tp.topic}[{partition}]@{offset} is no longer in the log")
                    chunk = decode(record.value, record.headers)
                    if not isinstance(chunk, RecipientChunkReceived) or chunk.job_id != job_id \
                            or chunk.chunk_no != number:
                        raise LookupError(f"{tp.topic}[{partition}]@{offset} is not chunk {number} of job {job_id}")
                    yield chunk
            finally:
                if current is not None:
                    consumer.unsubscribe()


class LoggedLearners:
    """A committed chunked job's learners, read from the log each time they are cut into batches."""

    def __init__(self, reader: ChunkReader, job_id: str, places: Sequence[tuple[int, int]], count: int) -> None:
        self._reader = reader
        self._job_id = job_id
        self._places = list(places)
        self._count = count

    @property
    def count(self) -> int:
        return self._count

    async def batches(self, size: int) -> AsyncIterator[list[Recipient]]:
        batch: list[Recipient] = []
        last: int | None = None
        chunks = self._reader.chunks(self._job_id, self._places)
        try:
            async for chunk in chunks:
                for recipient in without_repeats(chunk.recipients, last):
                    batch.append(recipient)
                    if len(batch) == size:
                        yield batch
                        batch = []
                last = chunk.recipients[-1].userid  # sorted: the largest userid so far
        finally:
            await chunks.aclose()  # releases the reader's lock also when the caller stops early
        if batch:
            yield batch
