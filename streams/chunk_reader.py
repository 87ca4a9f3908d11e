"""Reads a chunked job's learners back from job-requests, chunk by chunk, for the route agent to cut batches.

The route agent keeps only where each chunk lies in the log (streams.chunked_jobs); after the commit it reads
the chunks in chunk order, one fetch (a few MB) at a time, and removes repeated learners while streaming
(schemas.chunking): memory stays flat whatever the job's size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from aiokafka import TopicPartition

from config.settings import Settings
from eventlog.topics import MAX_MESSAGE_BYTES
from schemas.chunking import without_repeats
from schemas.envelope import decode
from schemas.events import Recipient, RecipientChunkReceived
from streams.log_reader import LogReader

# A fetch returns at least one record however large; this bounds what is read ahead of the chunk in hand (a
# chunk of 10,000 learners is ~1 MB, ~8 MB once decoded: 4 MiB read ahead doubled the reader's share).
_FETCH_BYTES = 1024 * 1024
# Chunks taken from the consumer at once. The fetch size counts compressed bytes: one 1 MiB fetch holds 4-5 lz4
# chunks of ~1 MB, and with 16 records per take all of them were decompressed and held while the chunk in hand was
# decoded (up to 5 job-requests records, 5.1 MB, counted in the worker while a 300,000-learner job was cut,
# docs/scaling.md). One at a time, the others wait compressed in the consumer's buffer.
_RECORDS_AT_ONCE = 1


class ChunkReader(LogReader):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, what="chunk reader", max_partition_fetch_bytes=_FETCH_BYTES,
                         fetch_max_bytes=max(_FETCH_BYTES, MAX_MESSAGE_BYTES // 4),
                         max_records=_RECORDS_AT_ONCE)
        self._topic = settings.topic("job-requests")

    async def chunks(self, job_id: str,
                     places: Sequence[tuple[int, int]]) -> AsyncGenerator[RecipientChunkReceived, None]:
        """The chunks at ``places`` (chunk 0, 1, … of the job), in that order."""
        async with self.reading() as log:
            for number, (partition, offset) in enumerate(places):
                record = await log.record_at(TopicPartition(self._topic, partition), offset)
                chunk = decode(record.value, record.headers)
                if not isinstance(chunk, RecipientChunkReceived) or chunk.job_id != job_id \
                        or chunk.chunk_no != number:
                    raise LookupError(f"{self._topic}[{partition}]@{offset} is not chunk {number} of job {job_id}")
                yield chunk
                # Not held while the next one is fetched and decoded: held here and by the caller's loop
                # variable, two decoded chunks (~16 MB at 10,000 learners each) were alive at every chunk boundary.
                del record, chunk


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
                del chunk  # freed before the next one is decoded (see chunks)
        finally:
            await chunks.aclose()  # releases the reader's lock also when the caller stops early
        if batch:
            yield batch
