"""A poll is decoded and committed in pieces (projections.projector._pieces), each decoded while the one before
commits. The pieces must hand over every record once, each partition's records in order, and leave the same
events and the same offsets to store as decoding the poll whole; and the collector pause must leave the
collector as it found it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

import projections.projector as projector_module
from config.settings import Settings
from projections import decoder, recipients
from projections.projector import LIVE_POLL_BYTES, LIVE_TAKE, Projector, ProjectorStats, _pieces
from schemas.envelope import encode
from schemas.events import RecipientFailed, RecipientSent

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def record(tp: TopicPartition, offset: int, userid: int, padding: int) -> ConsumerRecord:
    """A real outcome record as aiokafka hands it over; ``padding`` makes its value longer."""
    if userid % 7 == 0:
        event: RecipientSent | RecipientFailed = RecipientFailed(
            job_id="pieces", batch_no=0, userid=userid, email=f"l{userid}@example.org", provider="smtp",
            error="550 " + "x" * padding, attempts=1, retryable=False, failed_at=T0)
    else:
        event = RecipientSent(job_id="pieces", batch_no=0, userid=userid, email=f"l{userid}@example.org",
                              provider="smtp", message_id=f"<{userid}{'y' * padding}@x>", attempts=1, sent_at=T0)
    encoded = encode(event)
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_764_568_800_000 + offset, 0, encoded.key,
                          encoded.value, None, len(encoded.key), len(encoded.value), tuple(encoded.headers))


polls = st.lists(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=40),
                 min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(polls, st.integers(min_value=1, max_value=20_000))
def test_pieces_hand_over_every_record_once_in_order_and_near_the_size(paddings: list[list[int]], size: int) -> None:
    polled = {}
    for p, pads in enumerate(paddings):
        tp = TopicPartition("t.outcomes", p)
        polled[tp] = [record(tp, 100 + i, 1 + p * 1000 + i, pad) for i, pad in enumerate(pads)]

    pieces = list(_pieces(polled, size))

    assert all(piece and all(piece.values()) for piece in pieces), "no empty piece, no empty partition slice"
    for tp, records in polled.items():
        assert [r for piece in pieces for r in piece.get(tp, [])] == records
    for piece in pieces:
        values = [len(r.value) for records in piece.values() for r in records]
        assert sum(values[:-1]) < size, "a piece ends at the record that reaches the size"


@settings(max_examples=30, deadline=None)
@given(polls, st.integers(min_value=1, max_value=20_000))
def test_decoding_the_pieces_gives_the_events_and_offsets_of_the_whole_poll(paddings: list[list[int]],
                                                                            size: int) -> None:
    polled = {}
    for p, pads in enumerate(paddings):
        tp = TopicPartition("t.outcomes", p)
        polled[tp] = [record(tp, 100 + i, 1 + p * 1000 + i, pad) for i, pad in enumerate(pads)]
    settings_ = Settings(environment="test", kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://x@y/z")

    whole = Projector(settings_)._decode(polled)
    piecewise = Projector(settings_)
    events, positions = [], {}
    for piece in _pieces(polled, size):
        decoded = piecewise._decode(piece)
        events.extend(decoded.events)
        positions.update(decoded.positions)  # stored after each piece's commit, in order: the last one stands

    assert sorted(events, key=lambda e: (e[0].partition, e[0].offset)) == \
        sorted(whole.events, key=lambda e: (e[0].partition, e[0].offset))
    assert positions == whole.positions == {(tp.topic, tp.partition): records[-1].offset + 1
                                            for tp, records in polled.items()}


def test_steady_rate_counts_from_the_first_record_to_the_last_commit() -> None:
    stats = ProjectorStats(events=50_000, seconds=2.0, first_record_at=10.0, last_commit_at=11.25)
    assert stats.per_second == 25_000
    assert stats.steady_per_second == 40_000
    assert ProjectorStats(events=0, seconds=1.0).steady_per_second == 0.0  # nothing read


class BufferedConsumer:
    """What the projector's poll sees of aiokafka's consumer: each partition's fetched records, handed over by
    getmany as aiokafka's Fetcher.fetched_records does, partition after partition until max_records."""

    def __init__(self, buffered: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.buffered = {tp: list(records) for tp, records in buffered.items()}

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        drained = {}
        for tp in partitions:
            records = self.buffered.get(tp)
            if not records or max_records == 0:
                continue
            drained[tp], self.buffered[tp] = records[:max_records], records[max_records:]
            max_records -= len(drained[tp])
        return drained


async def test_a_live_poll_stays_near_its_byte_limit_however_much_the_consumer_has_buffered() -> None:
    # A large job's cut: every batches partition has a whole fetch buffered (~50 BatchDispatched of ~20 KB).
    # The first take of a poll used to hand all of them over at once (12 MB); the byte limit only stopped the
    # takes after it.
    buffered = {TopicPartition("t.batches", p): [record(TopicPartition("t.batches", p), i, 1 + p * 1000 + i, 20_000)
                                                 for i in range(50)] for p in range(12)}
    consumer = BufferedConsumer(buffered)
    projector = Projector(Settings(environment="test"))
    projector._live = True
    projector._partitions = list(buffered)
    polls = []
    while polled := await projector._poll(consumer):  # type: ignore[arg-type]
        polls.append(polled)
    largest = max(len(r.value) for records in buffered.values() for r in records)
    for polled in polls:
        size = sum(len(r.value) for records in polled.values() for r in records)
        assert size <= LIVE_POLL_BYTES + LIVE_TAKE * largest
    for tp, records in buffered.items():
        assert [r for polled in polls for r in polled.get(tp, [])] == records


class InProcessDecoder:
    """projections.decoder.Decoder's contract (build answered as a future) without the process: its build runs
    here, answered at once."""

    async def started(self) -> bool:
        return True

    def build(self, records: list) -> asyncio.Future:
        answered = asyncio.get_running_loop().create_future()
        answered.set_result(decoder.build(records))
        return answered

    def close(self) -> None:
        pass


async def commits_of(projector: Projector, consumer: BufferedConsumer, monkeypatch: pytest.MonkeyPatch,
                     ) -> list[tuple[int, bool]]:
    """(events, durable) of each commit ``_apply`` makes of everything ``consumer`` has buffered, in pieces of
    ~2 KB; the commits themselves only recorded."""
    monkeypatch.setattr(projector_module, "PIECE_BYTES", 2000)
    monkeypatch.setattr(projector_module, "LIVE_PIECE_BYTES", 2000)
    monkeypatch.setattr(decoder, "_written", recipients.Written())
    made: list[tuple[int, bool]] = []

    async def commit(conn: object, polled: Any, *, durable: bool = True) -> None:
        await asyncio.sleep(0)
        made.append((polled.count, durable))
        projector._next.update(polled.ends)

    monkeypatch.setattr(projector, "_commit", commit)
    targets = {tp: records[-1].offset + 1 for tp, records in consumer.buffered.items()}
    total = sum(len(records) for records in consumer.buffered.values())
    projector._partitions = list(targets)
    for tp, records in consumer.buffered.items():
        projector._next[tp] = projector._decoded[tp] = records[0].offset
    await projector._apply(None, consumer, await projector._poll(consumer), targets)  # type: ignore[arg-type]
    assert sum(count for count, _ in made) == total
    return made


def outcomes_buffered(settings_: Settings) -> BufferedConsumer:
    tps = [TopicPartition(settings_.topic("outcomes"), p) for p in range(3)]
    return BufferedConsumer({tp: [record(tp, i, 1 + p * 1000 + i, 50) for i in range(60)]
                             for p, tp in enumerate(tps)})


async def test_catching_up_only_the_last_commit_waits_for_the_wal_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    # A replay with its decoder process: every commit with a piece decoding behind it skips the flush, and the
    # last one before _apply returns is durable (it flushes those before it).
    settings_ = Settings(environment="test")
    projector = Projector(settings_)
    projector._decoder = InProcessDecoder()  # type: ignore[assignment]
    made = await commits_of(projector, outcomes_buffered(settings_), monkeypatch)
    assert len(made) > 3
    assert [durable for _, durable in made] == [False] * (len(made) - 1) + [True]


async def test_the_live_projector_and_one_without_a_decoder_commit_durably(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_ = Settings(environment="test")
    live = Projector(settings_)
    live._live = True
    alone = Projector(settings_)  # catching up, its decoder process lost or never started
    for projector in (live, alone):
        made = await commits_of(projector, outcomes_buffered(settings_), monkeypatch)
        assert len(made) > 3
        assert all(durable for _, durable in made)


async def test_a_catching_up_poll_lets_the_commit_in_flight_run_between_its_takes() -> None:
    # Taking 5,000 fetched records never waits, so a commit started before the poll (a task) ran only after it,
    # with Postgres idle meanwhile. Each take now comes after a turn for the loop.
    settings_ = Settings(environment="test")
    tps = [TopicPartition(settings_.topic("outcomes"), p) for p in range(3)]
    buffered = {tp: [record(tp, i, 1 + p * 1000 + i, 0) for i in range(700)] for p, tp in enumerate(tps)}
    turns = [0]
    seen_at_take: list[int] = []

    class Watched(BufferedConsumer):
        async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict:
            seen_at_take.append(turns[0])
            return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)

    async def commit_in_flight() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    projector = Projector(settings_)  # catching up (not live)
    projector._partitions = tps
    commit = asyncio.create_task(commit_in_flight())
    try:
        polled = await projector._poll(Watched(buffered))  # type: ignore[arg-type]
    finally:
        commit.cancel()
    assert polled == buffered, "one poll still takes everything fetched, up to max_records, in order"
    assert len(seen_at_take) > 3
    assert all(b > a for a, b in zip(seen_at_take, seen_at_take[1:], strict=False)), seen_at_take
    assert seen_at_take[0] > 0, "the commit started before the first take"
