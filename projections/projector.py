"""The projector: reads the topics and keeps the Postgres read models current.

Each poll is applied in one transaction together with the next offset of every partition it read, so a
restart resumes exactly where the last commit ended: nothing lost, nothing applied twice. ``replay`` is the
same loop started from offset 0 into a fresh schema.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from config.settings import Settings
from eventlog.topics import EVENT_TOPICS
from projections import read_models, recipients, tracking
from projections.base import Applied, Position
from projections.decoder import Decoder, Raw
from projections.read_models import READ_MODELS
from projections.startup import Partitions, both, find_partitions, new_consumer
from resilience.collector import gc_paused
from resilience.dependencies import DEPENDENCIES, Backoff
from resilience.reasons import reason
from schemas.envelope import UndecodableRecord, decode, header

log = logging.getLogger(__name__)

PROJECTED_TOPICS = EVENT_TOPICS  # a name of its own so a test can add a topic not yet listed
PROJECTION = "read-models"
# A poll's records are held at once: this bounds it when records are large (a BatchDispatched of 200 learners
# is ~20 KB of JSON and ~10x that decoded).
POLL_BYTES = 8 * 1024 * 1024
# A poll is decoded and committed in pieces of about this size: a replay's batches (250 records of 200 learners
# for a 50,000-learner job) came in one poll and were decoded whole (~40 MB of objects at once). 5,000 outcomes
# are ~1.7 MB: one piece.
PIECE_BYTES = 2 * 1024 * 1024
# The live projector (not catching up) keeps pace with the workers, so large polls gain it little, and a large
# job's BatchDispatched arrive in one burst when it is cut (~100 MB for 1,000,000 learners): with the limits
# above its peak memory grew with the job (aiokafka's read-ahead of 4 MiB per batches partition, 2 MiB pieces
# decoded ~10x). These keep it near its 10,000-learner figure (docs/scaling.md); its fetches are bounded in
# projections.startup (LIVE_FETCH_BYTES).
LIVE_POLL_BYTES = 1024 * 1024
LIVE_PIECE_BYTES = 512 * 1024
# Records taken from the consumer at a time while live. POLL_BYTES and LIVE_POLL_BYTES are checked between takes,
# and one take hands over everything the consumer has buffered up to its max_records, every partition's fetch:
# when a 1,000,000-learner job was cut, the first take of a poll could be every batches partition's fetch at once
# (a fetch returns a producer batch whole: up to 1 MiB, ~50 BatchDispatched, per partition). 64 records are at
# most ~1.3 MB of BatchDispatched, and ~22 KB of outcomes (a poll of them takes a few more calls).
LIVE_TAKE = 64
# Catching up, records are taken 500 at a time (~1-2 ms of aiokafka's work) with a turn for the event loop before
# each take: the previous piece's commit, a task, runs only when this process waits, and taking a poll of 5,000
# records never waits when they are fetched already. Taken whole, the poll (10-25 ms) ran while Postgres sat
# idle between two commits; taken this way, the commit is sent and runs in Postgres while the poll is taken.
CATCHUP_TAKE = 500


@dataclass
class ProjectorStats:
    events: int = 0
    skipped: int = 0
    seconds: float = 0.0
    reconnects: int = 0  # waits for Postgres or Kafka to come back
    built_apart: int = 0  # events whose rows the decoder process built (catching up: projections/decoder.py)
    # time.monotonic() when the first record was in hand and when the last poll committed: a replay's rate
    # without its start-up (connecting, creating the read models, finding the partitions and their offsets)
    first_record_at: float | None = None
    last_commit_at: float | None = None

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def steady_per_second(self) -> float:
        """Events per second from the first record fetched to the last commit."""
        if self.first_record_at is None or self.last_commit_at is None or self.last_commit_at <= self.first_record_at:
            return 0.0
        return self.events / (self.last_commit_at - self.first_record_at)


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A poll decoded: its events, the next offset per partition to store with them, and to read after them;
    the rows the decoder process built of the rest (recipients.build), when it did."""

    events: list[Applied]
    positions: dict[tuple[str, int], int]
    ends: dict[TopicPartition, int]
    built: recipients.Copied | None = None
    count: int = 0  # events decoded, those ``built`` included


async def _close_quietly(conn: psycopg.AsyncConnection | None) -> None:
    if conn is None:
        return
    try:
        await conn.close()
    except (psycopg.Error, OSError):
        pass  # it was lost anyway


def _pieces(polled: dict[TopicPartition, list], size: int) -> Iterator[dict[TopicPartition, list]]:
    """``polled`` cut into pieces of about ``size`` bytes of record values, each partition's records in order."""
    piece: dict[TopicPartition, list] = {}
    held = 0
    for tp, records in polled.items():
        start = 0
        for i, record in enumerate(records):
            held += len(record.value or b"")
            if held >= size:
                piece[tp] = records[start:i + 1]
                yield piece
                piece, held, start = {}, 0, i + 1
        if start < len(records):
            piece[tp] = records[start:]
    if piece:
        yield piece


class Projector:
    def __init__(self, settings: Settings, *, schema: str | None = None, max_records: int = 5000,
                 fresh: bool = False) -> None:
        """``fresh``: ``schema`` (never the live one) is dropped when the projector first connects, so it starts
        from nothing (a replay)."""
        if fresh and (schema is None or schema == settings.projection_schema):
            raise ValueError("the live schema is never dropped: name a fresh one")
        self.settings = settings
        self.schema = schema
        self._fresh = fresh  # until the first connection has dropped the schema
        self._consumer_started = False
        self._early: dict[TopicPartition, list] = {}  # a fresh replay's first poll, read while its DDL ran (_sync)
        self.max_records = max_records
        self._live = False  # run() not catching up: the LIVE_ limits
        self.stats = ProjectorStats()
        self.serving = False  # its read models created and its partitions positioned once (its health says so)
        self._stop = asyncio.Event()
        # Next offset to apply per partition, from what was applied: aiokafka's position() moves when records
        # are fetched into its buffer, before getmany() returns them, so it cannot say "caught up".
        self._next: dict[TopicPartition, int] = {}
        self._decoded: dict[TopicPartition, int] = {}  # next offset to decode: ahead of _next by one poll at most
        self._held: list[TopicPartition] = []  # partitions not polled until the others are caught up (replay)
        self._partitions: list[TopicPartition] = []  # assigned
        self._decoder: Decoder | None = None  # catching up: builds most rows (projections/decoder.py)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, until_caught_up: bool = False) -> ProjectorStats:
        """Project until stopped, or (``until_caught_up``) until every partition's end seen at start.

        Postgres lost (stopped, restarted, a dropped connection): the poll's transaction did not commit, so its
        offsets were not stored either; the projector reconnects with back-off and seeks every partition back to
        the offsets stored with the rows, so nothing is lost or applied twice. A broker restart is ridden out
        by the consumer itself; a Kafka call that fails (the consumer's start included) is retried the same way.
        Any other error ends the run, with the decoder process, the consumer and the connection closed.
        """
        self._live = not until_caught_up
        consumer = new_consumer(self.settings, catching_up=until_caught_up)
        DEPENDENCIES.track("postgres")
        DEPENDENCIES.track("kafka")
        backoff = Backoff(base=0.5, cap=self.settings.reconnect_max_delay)
        # Catching up, outcomes and batches are decoded in a process of their own, forked before the consumer
        # starts or a connection opens (it copies neither); it starts up while they do (_sync).
        # Into a schema it drops (a replay), the decoder process sends learners it has not seen as fresh rows.
        self._decoder = Decoder.forked(fresh=self._fresh) if until_caught_up else None
        started = time.monotonic()
        # What is alive now (modules, pydantic's validators, the clients) lives as long as the projector: out of
        # the collector's sight, a collection scans only what the polls made (the poll's gc_paused). Frozen
        # again once the consumer and the connection are up.
        gc.freeze()
        # Catching up (a replay) ends by itself, and what it decodes is freed by reference counting (events hold
        # no cycles): no collection at all until it ends. Between two pieces the collector otherwise ran on the
        # piece just decoded, ~6 % of a replay's time in py-spy. The live projector runs for months and keeps it.
        collecting = gc.isenabled() and until_caught_up
        if collecting:
            gc.disable()
        conn: psycopg.AsyncConnection | None = None
        synced = False  # partitions assigned and positioned at the stored offsets
        targets: dict[TopicPartition, int] | None = None
        try:
            while not self._stop.is_set():
                try:
                    if not synced:
                        conn, found = await self._sync(consumer, conn, ends=until_caught_up and targets is None)
                        synced = True
                        DEPENDENCIES.restored("kafka")
                        if targets is None:
                            targets = found.ends or {}
                            gc.freeze()
                            self.serving = True
                            log.info("projector started: %d partitions into schema %s", len(found.partitions),
                                     self.schema or self.settings.projection_schema)
                        else:
                            log.warning("projector resumed at its stored offsets after %d reconnect(s)",
                                        self.stats.reconnects)
                        backoff.reset()
                        if until_caught_up:
                            self._hold_batches(found.partitions, targets)
                    assert conn is not None and targets is not None  # set when first synced
                    self._release_batches(targets)
                    if until_caught_up and all(self._next[tp] >= end for tp, end in targets.items()):
                        break
                    polled, self._early = self._early or await self._poll(consumer), {}
                    if polled:
                        await self._apply(conn, consumer, polled, targets)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    # The poll in hand was not committed: drop it and seek back to what Postgres stored.
                    DEPENDENCIES.lost("postgres", reason(exc))
                    await _close_quietly(conn)
                    conn, synced = None, False
                    await self._wait(backoff.next(), "postgres", exc)
                except KafkaError as exc:
                    DEPENDENCIES.lost("kafka", reason(exc))
                    synced = False
                    await self._wait(backoff.next(), "kafka", exc)
        finally:
            self.stats.seconds = time.monotonic() - started
            self._close_decoder()
            await consumer.stop()
            await _close_quietly(conn)
            gc.unfreeze()  # a process that goes on (a test, a benchmark) collects them again
            if collecting:
                gc.enable()
        return self.stats

    async def _poll(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list]:
        """One poll, joined by what the consumer has already fetched, up to ``max_records`` and POLL_BYTES.

        A backlog (a replay, a restart) then goes through in few, large transactions: one getmany hands over what
        one fetch response held, which on a 50,000-learner job's log made ~570 transactions of ~90 events.
        """
        held = set(self._held)
        reading = [tp for tp in self._partitions if tp not in held]  # every assigned one when none is held
        take = LIVE_TAKE if self._live else CATCHUP_TAKE
        polled: dict[TopicPartition, list] = {}
        count = size = 0
        while count < self.max_records and size < (LIVE_POLL_BYTES if self._live else POLL_BYTES):
            if not self._live:
                await asyncio.sleep(0)  # a turn for the commit in flight before each take (see CATCHUP_TAKE)
            more = await consumer.getmany(*reading, timeout_ms=0 if polled else 200,
                                          max_records=min(take, self.max_records - count))
            if not more:
                break
            for tp, records in more.items():
                polled.setdefault(tp, []).extend(records)
                count += len(records)
                size += sum(len(r.value or b"") for r in records)
        return polled

    def _hold_batches(self, partitions: list[TopicPartition], targets: dict[TopicPartition, int]) -> None:
        """Catching up (a replay), read the batches topic after the others.

        The read models do not depend on the order topics are read in (tests/integration/test_projection_polls.py),
        but the cost does: outcomes read first insert each learner's row once, and the BatchDispatched read
        afterwards finds it there; read the other way round, every learner is inserted as pending and then
        rewritten (an update that touches every index). In bench/replay.py, under load, a commit of 5,000
        outcomes took 0.05-0.1 s this way against 0.09-0.15 s the other way round.

        Held, they are not polled but still fetched (the consumer buffers a fetch per partition): paused, their
        first fetch waited behind a fetch of the other, exhausted partitions, which waits out fetch_max_wait_ms
        (0.1-0.35 s in bench/replay.py).
        """
        batches = self.settings.topic("batches")
        self._held = [tp for tp in partitions if tp.topic == batches and self._next[tp] < targets[tp]]

    def _release_batches(self, targets: dict[TopicPartition, int]) -> None:
        if self._held and all(self._decoded[tp] >= end for tp, end in targets.items() if tp not in self._held):
            self._held = []

    async def _sync(self, consumer: AIOKafkaConsumer, conn: psycopg.AsyncConnection | None, *,
                    ends: bool) -> tuple[psycopg.AsyncConnection, Partitions]:
        """The connection (opened, its read models created, when ``conn`` is None) and the consumer (started,
        its partitions and their offsets found, the decoder process's start awaited) made ready at once, then every
        partition assigned and positioned at the offset stored with the rows (projections/startup.py).

        A fresh schema (a replay) has no stored offsets: its partitions are positioned at their first offsets as
        soon as the consumer has found them, so the first fetch runs while the read models are being created.

        On an error both sides have ended and a connection opened here is closed; ``conn`` is the caller's."""
        early = self._fresh and conn is None  # this open drops the schema: nothing stored can be found in it

        async def discard(opened: tuple[psycopg.AsyncConnection, dict]) -> None:
            if opened[0] is not conn:
                await _close_quietly(opened[0])

        try:
            (opened, stored), found = await both(self._open(conn), self._start(consumer, ends=ends, position=early),
                                                 discard=discard)
        except BaseException:
            self._early = {}  # read again from where the next sync positions the consumer
            raise
        if not early or stored:  # (a seek to where the consumer is would drop what it has fetched)
            self._early = {}
            self._position(consumer, found, stored)
        return opened, found

    async def _open(self, conn: psycopg.AsyncConnection | None,
                    ) -> tuple[psycopg.AsyncConnection, dict[tuple[str, int], int]]:
        """The connection (opened when ``conn`` is None) and the offsets stored in it."""
        opening = conn is None
        if conn is None:
            conn = await read_models.open_read_models(self.settings, self.schema, drop_first=self._fresh)
            self._fresh = False  # dropped and created again in one transaction: never again for this run
            DEPENDENCIES.restored("postgres")
        try:
            async with conn.cursor() as cur:
                return conn, await tracking.load(cur, PROJECTION)
        except BaseException:
            if opening:
                await _close_quietly(conn)
            raise

    async def _start(self, consumer: AIOKafkaConsumer, *, ends: bool, position: bool) -> Partitions:
        """The consumer started and its partitions found; with ``position``, positioned at their first offsets
        and, catching up, the first poll read (taking the records out of the consumer is tens of ms of work in
        this process, done while Postgres creates the read models). Timed over 8 replays of bench/replay.py's log
        each way, load 2.6-3.3, the first record was in hand after a median 63-87 ms this way, 96-105 ms when
        the poll waited until the DDL was sent, 109-131 ms when it waited for the read models."""
        if not self._consumer_started:
            await consumer.start()
            self._consumer_started = True
        topics = [self.settings.topic(short) for short in PROJECTED_TOPICS]
        found, _ = await asyncio.gather(find_partitions(consumer, topics, ends=ends), self._decoder_started())
        if position:
            self._position(consumer, found, {})
            if found.ends is not None:  # catching up: the first poll too, read as a replay reads
                self._hold_batches(found.partitions, found.ends)
                self._early = await self._poll(consumer)
        return found

    async def _decoder_started(self) -> None:
        if self._decoder is not None and not await self._decoder.started():
            self._decoder = None  # it closed itself: the projector decodes everything

    async def _wait(self, delay: float, what: str, exc: BaseException) -> None:
        """Back off before reconnecting, unless asked to stop meanwhile."""
        self.stats.reconnects += 1
        log.warning("projector: %s unavailable (%s); reconnecting in %.1f s", what, reason(exc), delay)
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=delay)
        except TimeoutError:
            pass

    def _position(self, consumer: AIOKafkaConsumer, found: Partitions, stored: dict[tuple[str, int], int]) -> None:
        # Assigned and positioned in one step: assigned first, the consumer would look up the latest offsets
        # meanwhile and start a fetch there that waits out fetch_max_wait_ms before ours is sent (0.1-0.25 s
        # before the first record of a replay, bench/replay.py).
        consumer.assign(found.partitions)
        self._partitions = found.partitions
        for tp in found.partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None or offset < found.beginnings[tp]:  # never read, or expired by retention since
                offset = found.beginnings[tp]
            consumer.seek(tp, offset)
            self._next[tp] = self._decoded[tp] = offset

    def _decode(self, polled: dict[TopicPartition, list], elsewhere: list[int] | None = None) -> _Decoded:
        """``elsewhere``: the outcomes and batches topics' records were sent to the decoder process, and these are
        the places (in the order of ``polled``) of the ones it did not turn into rows: only those are decoded
        here."""
        # A poll's events all live until its commit (resilience.collector.gc_paused); with gc.freeze() at start-up
        # this took a replay of 50,503 events in bench/replay.py from 2.2 s to 1.7 s.
        with gc_paused():
            return self._decode_poll(polled, elsewhere)

    def _decode_poll(self, polled: dict[TopicPartition, list], elsewhere: list[int] | None) -> _Decoded:
        events: list[Applied] = []
        positions: dict[tuple[str, int], int] = {}
        apart = self._built_apart()
        place, left = 0, iter(elsewhere or ())
        wanted = next(left, None)
        count = 0
        for tp, records in polled.items():
            sent = elsewhere is not None and tp.topic in apart
            for record in records:
                positions[(tp.topic, tp.partition)] = record.offset + 1
                if sent:
                    here, place = place, place + 1
                    if here != wanted:
                        count += 1  # its rows came from the decoder process
                        continue
                    wanted = next(left, None)
                try:
                    event = decode(record.value, record.headers)
                except UndecodableRecord as exc:
                    # The agents dead-letter what they cannot read; the projector only skips it.
                    self.stats.skipped += 1
                    log.warning("skipping %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, exc)
                    continue
                when = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                events.append((Position(tp.topic, tp.partition, record.offset, when), event))
        ends = {tp: records[-1].offset + 1 for tp, records in polled.items()}
        return _Decoded(events, positions, ends, count=count + len(events))

    def _start_decoding(self, piece: dict[TopicPartition, list]) -> Coroutine[None, None, _Decoded]:
        """The piece's outcomes and batches sent to the decoder process now, when there is one (catching up);
        awaited, the returned coroutine decodes the rest here and hands the piece over. The piece counts as
        decoded from now on (the next poll may read on)."""
        if self.stats.first_record_at is None:
            self.stats.first_record_at = time.monotonic()
        self._decoded.update({tp: records[-1].offset + 1 for tp, records in piece.items()})
        apart = self._built_apart()
        sent: list[Raw] = [] if self._decoder is None else [
            (r.value, header(r.headers, "ce_type")) for tp, records in piece.items() if tp.topic in apart
            for r in records]
        if self._decoder is None or not sent:
            return self._decoded_here(piece)
        return self._decoded_elsewhere(piece, self._decoder.build(sent))

    def _built_apart(self) -> tuple[str, str]:
        """The topics whose records go to the decoder process: those recipients.build can turn into rows."""
        return self.settings.topic("outcomes"), self.settings.topic("batches")

    async def _decoded_here(self, piece: dict[TopicPartition, list]) -> _Decoded:
        return self._decode(piece)

    async def _decoded_elsewhere(self, piece: dict[TopicPartition, list],
                                 rows: asyncio.Future[tuple[recipients.Copied, list[int]]]) -> _Decoded:
        try:
            built, others = await rows
        except BrokenProcessPool as exc:
            log.warning("replay decoder process lost (%s): decoding in the projector from here on", reason(exc))
            self._close_decoder()
            return self._decode(piece)
        decoded = self._decode(piece, others)
        return _Decoded(decoded.events, decoded.positions, decoded.ends, built, decoded.count)

    def _close_decoder(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    async def _commit(self, conn: psycopg.AsyncConnection, polled: _Decoded, *, durable: bool = True) -> None:
        """One poll's row changes and the offsets after it, in one transaction.

        Not ``durable``: the commit does not wait for Postgres to flush its WAL to disk (``synchronous_commit``
        off for this transaction only). Rows and offsets are one transaction, so a server crash can lose only
        the last such commits whole, rows and offsets together, and the projector reads them again from the
        offsets that remain; a later durable commit flushes every one before it (the WAL is written in order).
        In bench/replay.py on this shared machine, timed per commit, three replays of 14 commits each waited
        0.16, 1.66 and 0.57 s in all for the flush (of 1.8, 3.3 and 2.1 s), with nothing else going on meanwhile:
        the disk is shared, and one flush took from ~1 ms to over 0.1 s."""
        async with conn.transaction(), conn.cursor() as cur:
            if not durable:
                await cur.execute("SET LOCAL synchronous_commit TO off")
            for model in READ_MODELS:
                if model is recipients:
                    await recipients.apply(cur, polled.events, polled.built)
                else:
                    await model.apply(cur, polled.events)
            await tracking.save(cur, PROJECTION, polled.positions)
        self.stats.events += polled.count
        self.stats.built_apart += polled.count - len(polled.events)
        self.stats.last_commit_at = time.monotonic()
        self._next.update(polled.ends)

    async def _apply(self, conn: psycopg.AsyncConnection, consumer: AIOKafkaConsumer, polled: dict,
                     targets: dict[TopicPartition, int]) -> None:
        """Apply ``polled``, then each poll already fetched after it, until none is or ``targets`` are reached.

        Polls are committed one at a time and in order. Each commit is started as a task before the next piece is
        decoded, but it runs only when the event loop gets a turn: while getmany waits for a fetch, or while the
        decoder process (catching up) decodes, not while a piece decodes here. With the decoder, the piece after
        the next is sent to it before the next is awaited, so it always has one to work on.

        A commit with another piece already decoding behind it (catching up, with the decoder) does not wait
        for the WAL flush (see _commit); the last one before this returns does, and flushes all of them: once
        a replay has returned, every row it committed is on disk. The live projector's commits are all durable.
        """
        commit: asyncio.Task[None] | None = None
        decoding: deque[Coroutine[None, None, _Decoded]] = deque()
        ahead = 0 if self._decoder is None else 1
        try:
            while polled:
                for piece in _pieces(polled, LIVE_PIECE_BYTES if self._live else PIECE_BYTES):
                    decoding.append(self._start_decoding(piece))
                    if len(decoding) > ahead:
                        next_piece = decoding.popleft()
                        commit = await self._commit_next(conn, next_piece, commit,
                                                         durable=self._live or not decoding)
                if self._stop.is_set() or (targets and all(self._decoded[tp] >= e for tp, e in targets.items())):
                    break
                self._release_batches(targets)
                polled = await self._poll(consumer)
            while decoding:
                next_piece = decoding.popleft()
                commit = await self._commit_next(conn, next_piece, commit, durable=not decoding)
            if commit is not None:
                await commit
        finally:
            for left in decoding:  # leaving on an error: pieces not committed are read again from the stored offsets
                left.close()
            if commit is not None and not commit.done():
                # Leaving on an error: the transaction in flight ends (commits or rolls back) before the
                # connection is closed or its stored offsets are read again. Its own error, if any, is the
                # connection's, and shows on the next use.
                await asyncio.wait([commit])
            if commit is not None and not commit.cancelled():
                commit.exception()  # retrieved: an error here was raised above or shows on the next use

    async def _commit_next(self, conn: psycopg.AsyncConnection, decoding: Coroutine[None, None, _Decoded],
                           commit: asyncio.Task[None] | None, *, durable: bool) -> asyncio.Task[None]:
        """The next piece decoded, the previous commit awaited, and this piece's commit started."""
        decoded = await decoding
        if commit is not None:
            await commit
        return asyncio.create_task(self._commit(conn, decoded, durable=durable))
