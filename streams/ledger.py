"""Reads back the outcomes a batch already recorded, so a batch processed again after a crash sends nobody twice.

Before a batch sends anything, the batch agent notes the end offset of the outcomes partition its job writes
to. If the batch comes back (the worker died before committing it), every outcome it recorded lies between
that offset and the end of the partition: reading that range tells exactly who was already served.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from schemas.envelope import UndecodableRecord, decode
from schemas.events import Event, RecipientOutcome

_FETCH_BYTES = 1024 * 1024


class RecordGone(LookupError):
    """The record asked for is before the start of its partition: retention has deleted it."""


class OutcomeLedger:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic("outcomes")
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one reader at a time: assign/seek are per consumer

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                # One record is wanted at a time (or one batch's outcomes), and a larger record still comes whole:
                # with MAX_MESSAGE_BYTES, fetching a chunked job's header pulled up to 32 MiB of the chunks after
                # it into the worker (its peak grew with the job: +75 MB at 1,000,000 learners).
                max_partition_fetch_bytes=_FETCH_BYTES,
            )
            await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def end_offset(self, partition: int) -> int:
        assert self._consumer is not None, "ledger not started"
        tp = TopicPartition(self._topic, partition)
        offsets = await self._consumer.end_offsets([tp])
        return int(offsets[tp])

    async def fetch(self, short_topic: str, partition: int, offset: int) -> Event:
        """The event at one place in the log (a retry re-reads the BatchDispatched its failures came from)."""
        value, headers = await self.fetch_record(short_topic, partition, offset)
        return decode(value, headers)

    async def fetch_record(self, short_topic: str, partition: int,
                           offset: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The raw value and headers of the record at one place in the log; ``RecordGone`` when retention has
        deleted it (a seek before the log's start would otherwise be reset elsewhere in the partition)."""
        assert self._consumer is not None, "ledger not started"
        tp = TopicPartition(self._settings.topic(short_topic), partition)
        async with self._lock:
            start = (await self._consumer.beginning_offsets([tp]))[tp]
            if offset < start:
                raise RecordGone(f"{tp.topic}[{partition}]@{offset} is no longer in the log (it starts at {start})")
            self._consumer.assign([tp])
            self._consumer.seek(tp, offset)
            try:
                while True:
                    records = (await self._consumer.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
                    if not records:
                        raise LookupError(f"{tp.topic}[{partition}]@{offset} is no longer in the log")
                    if records[0].offset >= offset:
                        return records[0].value or b"", list(records[0].headers or [])
            finally:
                self._consumer.unsubscribe()

    async def recorded(self, *, job_id: str, run: int, batch_no: int, partition: int,
                       from_offset: int) -> dict[int, RecipientOutcome]:
        """Outcomes of this batch already in the log, by userid (the first one wins)."""
        assert self._consumer is not None, "ledger not started"
        key = job_id.encode()
        found: dict[int, RecipientOutcome] = {}
        async with self._lock:
            tp = TopicPartition(self._topic, partition)
            end = (await self._consumer.end_offsets([tp]))[tp]
            if end <= from_offset:
                return found
            self._consumer.assign([tp])
            self._consumer.seek(tp, from_offset)
            while await self._consumer.position(tp) < end:
                records = await self._consumer.getmany(tp, timeout_ms=1000)
                for record in records.get(tp, []):
                    if record.key != key:
                        continue
                    try:
                        event: Event = decode(record.value, record.headers)
                    except UndecodableRecord:
                        continue
                    if (isinstance(event, RecipientOutcome) and event.run == run and event.batch_no == batch_no
                            and event.userid not in found):
                        found[event.userid] = event
            self._consumer.unsubscribe()
        return found
