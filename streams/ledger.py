"""Reads back the outcomes a batch already recorded, so a batch processed again after a crash sends nobody twice.

Before a batch sends anything, the batch agent notes the end offset of the outcomes partition its job writes
to. If the batch comes back (the worker died before committing it), every outcome it recorded lies between
that offset and the end of the partition: reading that range tells exactly who was already served.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from config.settings import Settings
from schemas.envelope import UndecodableRecord, decode
from schemas.events import Event, RecipientOutcome
from streams.log_reader import LogReader, RecordGone

__all__ = ["OutcomeLedger", "RecordGone"]  # RecordGone lives in streams.log_reader; imported from here too

# One record is wanted at a time (or one batch's outcomes), and a larger record still comes whole: with
# MAX_MESSAGE_BYTES, fetching a chunked job's header pulled up to 32 MiB of the chunks after it into the worker
# (its peak grew with the job: +75 MB at 1,000,000 learners).
_FETCH_BYTES = 1024 * 1024


class OutcomeLedger(LogReader):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, what="ledger", max_partition_fetch_bytes=_FETCH_BYTES)
        self._topic = settings.topic("outcomes")

    async def end_offset(self, partition: int) -> int:
        tp = TopicPartition(self._topic, partition)
        return int((await self._started().end_offsets([tp]))[tp])

    async def fetch(self, short_topic: str, partition: int, offset: int) -> Event:
        """The event at one place in the log (a retry re-reads the BatchDispatched its failures came from)."""
        value, headers = await self.fetch_record(short_topic, partition, offset)
        return decode(value, headers)

    async def fetch_record(self, short_topic: str, partition: int,
                           offset: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The raw value and headers of the record at one place in the log; ``RecordGone`` when retention has
        deleted it."""
        async with self.reading() as log:
            record = await log.record_at(TopicPartition(self._settings.topic(short_topic), partition), offset)
        return record.value or b"", list(record.headers or [])

    async def recorded(self, *, job_id: str, run: int, batch_no: int, partition: int,
                       from_offset: int) -> dict[int, RecipientOutcome]:
        """Outcomes of this batch already in the log, by userid (the first one wins)."""
        key = job_id.encode()
        found: dict[int, RecipientOutcome] = {}
        async with self.reading() as log:
            tp = TopicPartition(self._topic, partition)
            end = await log.end_offset(tp)
            if end <= from_offset:
                return found
            async for record in log.records_between(tp, from_offset, end):
                if record.key != key:
                    continue
                try:
                    event: Event = decode(record.value, record.headers)
                except UndecodableRecord:
                    continue
                if (isinstance(event, RecipientOutcome) and event.run == run and event.batch_no == batch_no
                        and event.userid not in found):
                    found[event.userid] = event
        return found
