"""Reading records back from places the log already holds, against the real broker: the chunks of a chunked job
(streams.chunk_reader) and a batch's recorded outcomes and single records (streams.ledger)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from eventlog.topics import create_topics
from schemas.envelope import decode, encode
from schemas.events import Event, Recipient, RecipientChunkReceived, RecipientSent
from streams import chunk_reader
from streams.chunk_reader import ChunkReader, LoggedLearners
from streams.ledger import OutcomeLedger
from streams.log_reader import RecordGone

pytestmark = pytest.mark.integration


def chunk(job_id: str, number: int, userids: list[int]) -> RecipientChunkReceived:
    return RecipientChunkReceived(job_id=job_id, chunk_no=number, recipients=[
        Recipient(userid=u, email=f"learner{u}@example.org") for u in userids])


def sent(job_id: str, userid: int, *, run: int = 0, batch_no: int = 1, attempts: int = 1) -> RecipientSent:
    return RecipientSent(job_id=job_id, run=run, batch_no=batch_no, userid=userid,
                         email=f"learner{userid}@example.org", provider="smtp", message_id=f"<{userid}@x>",
                         attempts=attempts)


class Log:
    """Writes records to a chosen partition (a place the test knows) and deletes them as retention does."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")

    async def __aenter__(self) -> Log:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def put(self, event: Event, partition: int) -> tuple[int, int]:
        record = encode(event)
        return await self.put_raw(record.topic, partition, record.key, record.value, record.headers)

    async def put_raw(self, short_topic: str, partition: int, key: bytes, value: bytes,
                      headers: list[tuple[str, bytes]] | None = None) -> tuple[int, int]:
        meta = await self.producer.send_and_wait(self.settings.topic(short_topic), value, key=key,
                                                 partition=partition, headers=headers or [])
        return meta.partition, meta.offset

    async def delete_before(self, short_topic: str, partition: int, offset: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(self.settings.topic(short_topic), partition):
                                        RecordsToDelete(offset)})
        finally:
            await admin.close()



@pytest.fixture
async def log(settings_factory) -> AsyncIterator[Log]:
    settings = settings_factory()
    await create_topics(settings)
    async with Log(settings) as opened:
        yield opened


@pytest.fixture
async def reader(log: Log) -> AsyncIterator[ChunkReader]:
    started = ChunkReader(log.settings)
    await started.start()
    yield started
    await started.stop()  # a hang here fails the test (pytest's timeout): the consumer must always stop


@pytest.fixture
async def ledger(log: Log) -> AsyncIterator[OutcomeLedger]:
    started = OutcomeLedger(log.settings)
    await started.start()
    yield started
    await started.stop()


async def test_chunks_come_back_in_chunk_order_from_wherever_they_lie(log, reader):
    await log.put(chunk("other", 0, [1, 2]), 0)
    one = await log.put(chunk("j", 1, [3, 4]), 0)  # sent before chunk 0: read by seeking back
    await log.put(chunk("other", 1, [3]), 0)
    zero = await log.put(chunk("j", 0, [1, 2, 3]), 0)
    two = await log.put(chunk("j", 2, [4, 5, 6]), 0)
    three = await log.put(chunk("j", 3, [7]), 1)  # another partition
    places = [zero, one, two, three]

    got = [c async for c in reader.chunks("j", places)]
    assert [(c.job_id, c.chunk_no, [r.userid for r in c.recipients]) for c in got] == [
        ("j", 0, [1, 2, 3]), ("j", 1, [3, 4]), ("j", 2, [4, 5, 6]), ("j", 3, [7])]

    # Repeats across chunk boundaries are removed while the batches are cut across the chunks.
    learners = LoggedLearners(reader, "j", places, 7)
    assert learners.count == 7
    assert [[r.userid for r in b] async for b in learners.batches(2)] == [[1, 2], [3, 4], [5, 6], [7]]

    # A caller that stops early releases the reader: the next read does not wait for it.
    async for _first in learners.batches(2):
        break
    assert [[r.userid for r in b] async for b in learners.batches(5)] == [[1, 2, 3, 4, 5], [6, 7]]


async def test_the_chunk_reader_holds_no_chunk_ahead_of_the_one_asked_for_and_reads_on_without_seeking(
        log, reader, monkeypatch):
    # Six chunks of ~100 KB: one 1 MiB fetch brings them all. Taken 16 at a time, five were held decoded-ready
    # beside the one in hand (a 1,000,000-learner job's chunks are ~1 MB each: 5 MB in the worker while it cut).
    places = [await log.put(chunk("big", n, list(range(n * 2000 + 1, (n + 1) * 2000 + 1))), 0) for n in range(6)]
    tp = TopicPartition(log.settings.topic("job-requests"), 0)
    async with reader.reading() as read:
        seeks = []
        seek = read._consumer.seek
        monkeypatch.setattr(read._consumer, "seek", lambda tp, offset: (seeks.append(offset), seek(tp, offset)))
        for number, (_, offset) in enumerate(places):
            record = await read.record_at(tp, offset)
            got = decode(record.value, record.headers)
            assert isinstance(got, RecipientChunkReceived) and got.chunk_no == number
            assert read.held == 0
        # Consecutive places are read on from the consumer's position: one seek, to the first.
        assert seeks == [places[0][1]]
        # A place behind the position, or far past it, is sought.
        assert (await read.record_at(tp, places[2][1])).offset == places[2][1]
        assert seeks == [places[0][1], places[2][1]]
    assert [c.chunk_no async for c in reader.chunks("big", places)] == list(range(6))


async def test_a_chunk_is_decoded_only_once_the_one_before_it_is_freed(log, reader, monkeypatch):
    # Cutting a job holds one decoded chunk (~8 MB for 10,000 learners), not two while the next one decodes.
    places = [await log.put(chunk("one", n, list(range(n * 50 + 1, (n + 1) * 50 + 1))), 1) for n in range(4)]
    alive_at_decode = []

    def counting_decode(value, headers):
        # This job's chunks only: another test's, not yet collected, would say nothing about this reader.
        alive_at_decode.append(sum(isinstance(o, RecipientChunkReceived) and o.job_id == "one"
                                   for o in gc.get_objects()))
        return decode(value, headers)

    monkeypatch.setattr(chunk_reader, "decode", counting_decode)
    learners = LoggedLearners(reader, "one", places, 200)
    cut = [[r.userid for r in b] async for b in learners.batches(30)]  # batches across chunk boundaries
    assert [u for b in cut for u in b] == list(range(1, 201)) and len(cut) == 7
    assert alive_at_decode == [0, 0, 0, 0]


async def test_a_place_holding_another_record_is_refused_and_a_deleted_chunk_is_gone(log, reader):
    zero = await log.put(chunk("j", 0, [1]), 2)
    theirs = await log.put(chunk("other", 1, [2]), 2)
    one = await log.put(chunk("j", 1, [2]), 2)

    with pytest.raises(LookupError, match=r"is not chunk 1 of job j"):
        _ = [c async for c in reader.chunks("j", [zero, theirs])]
    with pytest.raises(LookupError, match=r"is not chunk 0 of job j"):
        _ = [c async for c in reader.chunks("j", [one])]
    assert [c.chunk_no async for c in reader.chunks("j", [zero, one])] == [0, 1]

    await log.delete_before("job-requests", 2, one[1])
    with pytest.raises(RecordGone, match=r"is no longer in the log"):
        _ = [c async for c in reader.chunks("j", [zero, one])]


async def test_the_ledger_reads_one_record_back_and_says_when_retention_deleted_it(log, ledger):
    first = await log.put(chunk("j", 0, [1, 2]), 1)
    second = await log.put(chunk("j", 1, [3]), 1)
    event = await ledger.fetch("job-requests", *second)
    assert isinstance(event, RecipientChunkReceived) and (event.chunk_no, event.job_id) == (1, "j")
    value, headers = await ledger.fetch_record("job-requests", *first)
    again = decode(value, headers)
    assert isinstance(again, RecipientChunkReceived) and again.chunk_no == 0

    await log.delete_before("job-requests", 1, second[1])
    with pytest.raises(RecordGone, match=r"is no longer in the log"):
        await ledger.fetch_record("job-requests", *first)
    assert (await ledger.fetch("job-requests", *second)).chunk_no == 1  # type: ignore[attr-defined]


async def test_the_ledger_finds_the_outcomes_one_batch_run_recorded_after_a_noted_offset(log, ledger):
    await log.put(sent("j", 9), 0)  # before the noted offset: not this run's
    noted = await ledger.end_offset(0)
    assert await ledger.recorded(job_id="j", run=0, batch_no=1, partition=0, from_offset=noted) == {}
    await log.put(sent("j", 1), 0)
    await log.put(sent("j", 1, attempts=2), 0)  # recorded twice: the first one wins
    await log.put(sent("j", 2, batch_no=2), 0)  # another batch
    await log.put(sent("j", 3, run=1), 0)  # another run
    await log.put(sent("other", 4), 0)  # another job's key
    await log.put_raw("outcomes", 0, b"j", b"not an event")  # undecodable: passed over
    await log.put(sent("j", 5), 0)
    assert await ledger.end_offset(0) == noted + 7

    found = await ledger.recorded(job_id="j", run=0, batch_no=1, partition=0, from_offset=noted)
    assert sorted(found) == [1, 5]
    assert found[1].attempts == 1
    assert await ledger.recorded(job_id="j", run=0, batch_no=1, partition=0, from_offset=noted + 7) == {}
    assert sorted(await ledger.recorded(job_id="j", run=0, batch_no=1, partition=0, from_offset=0)) == [1, 5, 9]
    # The ledger is left ready for the next read: a fetch on another topic works after it.
    assert isinstance(await asyncio.wait_for(ledger.fetch("outcomes", 0, noted), 30), RecipientSent)
